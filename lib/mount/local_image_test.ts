import assert from "node:assert/strict";
import { UserError } from "../errors.ts";
import { isLocalImage } from "./local_image.ts";

Deno.test("isLocalImage: paths and existing files are local, references are not", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/here.erofs`, "x");
    assert.equal(isLocalImage("here.erofs", dir), true);
    assert.equal(isLocalImage("./missing.erofs", dir), true, "a path is a file even when missing");
    assert.equal(isLocalImage("/nowhere/missing.tar.gz", dir), true);
    for (
      const reference of ["alpine", "alpine:3.20", "127.0.0.1:5000/app:v1", "missing.erofs:v1"]
    ) {
      assert.equal(isLocalImage(reference, dir), false, reference);
    }
    assert.equal(isLocalImage("docker.io/library/missing.erofs", dir), false);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("isLocalImage: a bare file name that is no file is refused, not looked up on Docker Hub", () => {
  const dir = Deno.makeTempDirSync();
  try {
    for (const name of ["missing.erofs", "layer.tar", "layer.tar.gz", "root.IMG", "l.tgz"]) {
      assert.throws(() => isLocalImage(name, dir), (error: unknown) => {
        assert.ok(error instanceof UserError);
        assert.equal(error.message, `no file named ${name} here`);
        assert.match(
          error.hint ?? "",
          new RegExp(`docker\\.io/library/${name.replace(".", "\\.")}`),
        );
        return true;
      });
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("isLocalImage: a directory is refused with what it could be meant as", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.mkdirSync(`${dir}/tree`);
    Deno.mkdirSync(`${dir}/lay`);
    Deno.writeTextFileSync(`${dir}/lay/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
    const refused = (image: string, hint: RegExp) =>
      assert.throws(() => isLocalImage(image, dir), (error: unknown) => {
        assert.ok(error instanceof UserError);
        assert.equal(error.message, `${image} is a directory, not an image`);
        assert.match(error.hint ?? "", hint);
        return true;
      });
    refused("lay", /OCI image layout: name it oci:lay\[:TAG\]; .*docker\.io\/library\/lay/);
    refused("./lay", /^it holds an OCI image layout: name it oci:\.\/lay\[:TAG\]$/);
    // A bare name that is a plain directory here is still a reference (a build context).
    assert.equal(isLocalImage("tree", dir), false);
    refused("./tree", /erofs-oci build \.\/tree -o image\.erofs`$/);
    refused(`${dir}/tree`, /erofs-oci build .*\/tree -o image\.erofs`$/);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
