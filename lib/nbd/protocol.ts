/**
 * NBD wire constants (big-endian on the wire). Values from the NBD protocol document
 * (NetworkBlockDevice/nbd doc/proto.md) and linux/nbd.h; see ../shared/docs/formats.md §1.
 */

// Handshake (fixed newstyle negotiation).
/** "NBDMAGIC" */
export const NBD_INIT_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": opens every option request and the server's greeting. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Magic of every option reply. */
export const NBD_OPT_REPLY_MAGIC = 0x3e889045565a9n;

/** Handshake flags (server, u16). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Client flags (u32). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Option types. */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_ERR_UNSUP = 0x80000001;
export const NBD_REP_ERR_POLICY = 0x80000002;
export const NBD_REP_ERR_INVALID = 0x80000003;
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

/** NBD_REP_INFO item types. */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

/** Transmission flags (u16), also the kernel's SERVER_FLAGS. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;

/** What a read-only erofs-oci export advertises. */
export const READ_ONLY_EXPORT_FLAGS = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY |
  NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN;

// Transmission phase.
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_REQUEST_BYTES = 28;
export const NBD_REPLY_BYTES = 16;

/** Command types. */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;

/** errno values carried in replies (the protocol uses Linux numbers). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ESHUTDOWN = 108;

/**
 * Largest READ we serve. The protocol's default maximum block size is 32 MiB and the kernel's
 * max_hw_sectors_kb is 32768, so nothing legitimate asks for more.
 */
export const NBD_MAX_REQUEST_BYTES = 32 * 1024 * 1024;

/** Size constraints advertised through NBD_INFO_BLOCK_SIZE: any byte alignment works. */
export const BLOCK_SIZE_MIN = 1;
export const BLOCK_SIZE_PREFERRED = 4096;
export const BLOCK_SIZE_MAX = NBD_MAX_REQUEST_BYTES;

/** Command name for logs. */
export function commandName(type: number): string {
  return ["READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES"][type] ??
    `CMD_${type}`;
}
