/**
 * A source's bytes failed a check (a chunk-digest table, a verify hook) after the refetch the
 * checker allows: asking again is no use, unlike after a network error. Background work
 * (`--fetch-all`) stops on it instead of retrying.
 */
import { UserError } from "../errors.ts";

export class WrongBytesError extends UserError {
  constructor(message: string) {
    super(
      message,
      "the registry (or a mirror or proxy on the way) served other bytes than the image's; " +
        "never wrong bytes reach a reader: try again later, or another mirror",
    );
  }
}
