/** Throw-away EC P-256 key + self-signed certificate for test servers, made with openssl. */
import { runTool } from "./tool.ts";

export async function selfSignedP256(options: {
  subject: string;
  keyPath: string;
  certPath: string;
  /** `-addext` values (subjectAltName, basicConstraints, …). */
  extensions?: string[];
}): Promise<void> {
  await runTool("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:P-256",
    "-nodes",
    "-days",
    "2",
    "-subj",
    options.subject,
    ...(options.extensions ?? []).flatMap((extension) => ["-addext", extension]),
    "-keyout",
    options.keyPath,
    "-out",
    options.certPath,
  ]);
}
