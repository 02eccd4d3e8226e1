/**
 * A source's bytes failed a check (a chunk-digest table, a verify hook) after the refetch the
 * checker allows: asking again is no use, unlike after a network error. Background work
 * (`--fetch-all`) stops on it instead of retrying.
 */
export class WrongBytesError extends Error {}
