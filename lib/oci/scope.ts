/** Token scopes of the distribution API (`repository:NAME:ACTIONS`). */

/** `repository:NAME:pull` (distribution token scope). */
export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

/** `repository:NAME:pull,push`. */
export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}
