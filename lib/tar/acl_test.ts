import assert from "node:assert/strict";
import {
  ACL_TAG,
  ACL_UNDEFINED_ID,
  aclFromText,
  aclProblem,
  aclWithMode,
  decodeAcl,
  encodeAcl,
} from "./acl.ts";

const { USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER } = ACL_TAG;
const obj = (tag: number, perm: number) => ({ tag, perm, id: ACL_UNDEFINED_ID });

Deno.test("aclProblem: what the kernel's posix_acl_valid accepts, and nothing else", () => {
  const minimal = [obj(USER_OBJ, 6), obj(GROUP_OBJ, 4), obj(OTHER, 4)];
  const named = [
    obj(USER_OBJ, 7),
    { tag: USER, perm: 7, id: 1234 },
    obj(GROUP_OBJ, 0),
    { tag: GROUP, perm: 5, id: 50 },
    obj(MASK, 7),
    obj(OTHER, 0),
  ];
  assert.equal(aclProblem(encodeAcl(minimal)), undefined);
  assert.equal(aclProblem(encodeAcl(named)), undefined);
  const wrongVersion = encodeAcl(minimal);
  wrongVersion[0] = 1;
  assert.match(aclProblem(wrongVersion)!, /version 1/);
  assert.match(aclProblem(encodeAcl(minimal).subarray(0, 27))!, /whole 8-byte entries/);
  assert.match(aclProblem(encodeAcl([]))!, /no entries/);
  assert.match(
    aclProblem(encodeAcl([obj(USER_OBJ, 6), obj(0x40, 4), obj(OTHER, 4)]))!,
    /unknown tag/,
  );
  assert.match(
    aclProblem(encodeAcl([obj(USER_OBJ, 8), obj(GROUP_OBJ, 4), obj(OTHER, 4)]))!,
    /beyond rwx/,
  );
  assert.match(
    aclProblem(encodeAcl([obj(GROUP_OBJ, 4), obj(USER_OBJ, 6), obj(OTHER, 4)]))!,
    /out of order/,
  );
  assert.match(aclProblem(encodeAcl(named.filter((e) => e.tag !== MASK)))!, /without the mask/);
  assert.match(aclProblem(encodeAcl(minimal.slice(0, 2)))!, /lacks/);
  assert.match(aclProblem(encodeAcl([...minimal, obj(OTHER, 4)]))!, /out of order/);
  assert.match(
    aclProblem(encodeAcl(named.map((e) => e.tag === USER ? { ...e, id: ACL_UNDEFINED_ID } : e)))!,
    /names no id/,
  );
});

Deno.test("aclWithMode: owner, mask (else owning group) and other follow the mode, as chmod", () => {
  const withMask = encodeAcl([
    obj(USER_OBJ, 0),
    { tag: USER, perm: 7, id: 1234 },
    obj(GROUP_OBJ, 7),
    obj(MASK, 7),
    obj(OTHER, 7),
  ]);
  assert.deepEqual(decodeAcl(aclWithMode(withMask, 0o640)).map((e) => e.perm), [6, 7, 7, 4, 0]);
  const noMask = encodeAcl([obj(USER_OBJ, 0), obj(GROUP_OBJ, 7), obj(OTHER, 7)]);
  assert.deepEqual(decodeAcl(aclWithMode(noMask, 0o670)).map((e) => e.perm), [6, 7, 0]);
});

Deno.test("aclFromText: acl(5) text as tars carry it, in the kernel's order; names need ids", () => {
  const acl = aclFromText("user::rwx,user:1234:r-x,group::---\nmask::rwx,other::---,group:50:rw-")!;
  assert.equal(aclProblem(acl), undefined);
  assert.deepEqual(decodeAcl(acl), [
    obj(USER_OBJ, 7),
    { tag: USER, perm: 5, id: 1234 },
    obj(GROUP_OBJ, 0),
    { tag: GROUP, perm: 6, id: 50 },
    obj(MASK, 7),
    obj(OTHER, 0),
  ]);
  // star's fourth field; the short tags; mask and other without the empty qualifier
  assert.deepEqual(
    decodeAcl(aclFromText("u::rw-,u:joe:r--:1001,g::r--,m:r--,o:---")!).map((e) => e.id),
    [ACL_UNDEFINED_ID, 1001, ACL_UNDEFINED_ID, ACL_UNDEFINED_ID, ACL_UNDEFINED_ID],
  );
  assert.equal(aclFromText(""), undefined);
  assert.throws(() => aclFromText("user:joe:rwx"), /"joe" without a numeric id/);
  assert.throws(() => aclFromText("owner::rwx"), /unknown tag/);
  assert.throws(() => aclFromText("user::rwz"), /bad permissions/);
  assert.throws(() => aclFromText("other:1:rwx"), /cannot name/);
  assert.throws(() => aclFromText("user:4294967295:rwx"), /numeric id/);
});
