//! The FUSE-over-io_uring wire format (Linux ≥ 6.14, `include/uapi/linux/fuse.h`): the per-entry
//! header the kernel fills and reads, the command a submission carries, and the two conversions the
//! transport needs — a ring entry's request back into the bytes `/dev/fuse` would have delivered,
//! and an answer (`fuse_out_header` + payload) into the entry's buffers. No I/O here.

/// `FUSE_IO_URING_CMD_REGISTER`: hand the kernel an entry's buffers (also a first fetch).
pub const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: answer the entry's request and wait for the next one.
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `sizeof(struct fuse_in_header)`.
pub const IN_HEADER_LEN: usize = 40;
/// `sizeof(struct fuse_out_header)`.
pub const OUT_HEADER_LEN: usize = 16;
/// `FUSE_URING_IN_OUT_HEADER_SZ`: room for the in (request) or out (answer) header.
pub const IN_OUT_LEN: usize = 128;
/// `FUSE_URING_OP_IN_OUT_SZ`: room for the operation's own header (`fuse_write_in`, ...).
pub const OP_LEN: usize = 128;
/// Offset of `ring_ent_in_out` in `struct fuse_uring_req_header`.
pub const ENT_OFFSET: usize = IN_OUT_LEN + OP_LEN;
/// `sizeof(struct fuse_uring_req_header)`: in_out, op_in, then `fuse_uring_ent_in_out` (32 bytes).
pub const REQ_HEADER_LEN: usize = ENT_OFFSET + 32;

/// The 80-byte command area of an SQE128 `URING_CMD`: `struct fuse_uring_cmd_req`
/// (`flags`, `commit_id`, `qid`) followed by zeroes.
pub fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    // flags (0) at 0..8
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// What the kernel wrote into an entry: where the request's pieces are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    /// The id to commit the answer with (the request's `unique`).
    pub commit_id: u64,
    /// Bytes of the operation's header (copied into `op_in`).
    pub op_len: usize,
    /// Bytes of the remaining arguments (in the payload buffer).
    pub payload_len: usize,
    /// The request's `unique`, from its `fuse_in_header`.
    pub unique: u64,
}

/// Why an entry's contents cannot be a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadEntry {
    ZeroCommitId,
    Lengths {
        total: usize,
        payload: usize,
        capacity: usize,
    },
}

impl std::fmt::Display for BadEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadEntry::ZeroCommitId => write!(f, "ring entry with commit id 0"),
            BadEntry::Lengths {
                total,
                payload,
                capacity,
            } => write!(
                f,
                "ring entry lengths do not add up: request {total} bytes, payload {payload} of {capacity}"
            ),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Read an entry's header (`REQ_HEADER_LEN` bytes). The request's total length (`fuse_in_header.len`)
/// minus its in header and payload is the operation header's length, which must fit `op_in`.
pub fn parse_incoming(header: &[u8], payload_capacity: usize) -> Result<Incoming, BadEntry> {
    let total = u32_at(header, 0) as usize;
    let unique = u64_at(header, 8);
    let commit_id = u64_at(header, ENT_OFFSET + 8);
    let payload_len = u32_at(header, ENT_OFFSET + 16) as usize;
    if commit_id == 0 {
        return Err(BadEntry::ZeroCommitId);
    }
    let bad = || BadEntry::Lengths {
        total,
        payload: payload_len,
        capacity: payload_capacity,
    };
    if payload_len > payload_capacity {
        return Err(bad());
    }
    let op_len = total
        .checked_sub(IN_HEADER_LEN + payload_len)
        .ok_or_else(bad)?;
    if op_len > OP_LEN {
        return Err(bad());
    }
    Ok(Incoming {
        commit_id,
        op_len,
        payload_len,
        unique,
    })
}

/// Copy the in header and the operation header into the `IN_HEADER_LEN + op_len` bytes `prefix` right
/// in front of the payload, so that prefix + payload are the request as `/dev/fuse` delivers it.
pub fn write_prefix(header: &[u8], inc: &Incoming, prefix: &mut [u8]) {
    debug_assert_eq!(prefix.len(), IN_HEADER_LEN + inc.op_len);
    prefix[..IN_HEADER_LEN].copy_from_slice(&header[..IN_HEADER_LEN]);
    prefix[IN_HEADER_LEN..].copy_from_slice(&header[IN_OUT_LEN..IN_OUT_LEN + inc.op_len]);
}

/// An answer laid out for the ring: the out header goes to `in_out`, the rest to the payload buffer,
/// and `ring_ent_in_out.payload_sz` says how much of it there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub out_header: [u8; OUT_HEADER_LEN],
    pub payload_len: usize,
}

/// Why an answer cannot go back through the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadAnswer {
    NoHeader(usize),
    TooLong { len: usize, capacity: usize },
}

/// Split an answer given as slices (`fuse_out_header` first, possibly across slices) into its header
/// and its payload, copying the payload into `payload`.
pub fn split_answer<P: std::ops::Deref<Target = [u8]>>(
    parts: &[P],
    payload: &mut [u8],
) -> Result<Answer, BadAnswer> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total < OUT_HEADER_LEN {
        return Err(BadAnswer::NoHeader(total));
    }
    let body = total - OUT_HEADER_LEN;
    if body > payload.len() {
        return Err(BadAnswer::TooLong {
            len: body,
            capacity: payload.len(),
        });
    }
    let mut out_header = [0u8; OUT_HEADER_LEN];
    let (mut h, mut p) = (0usize, 0usize);
    for part in parts {
        let mut part: &[u8] = part;
        if h < OUT_HEADER_LEN {
            let n = part.len().min(OUT_HEADER_LEN - h);
            out_header[h..h + n].copy_from_slice(&part[..n]);
            h += n;
            part = &part[n..];
        }
        payload[p..p + part.len()].copy_from_slice(part);
        p += part.len();
    }
    Ok(Answer {
        out_header,
        payload_len: body,
    })
}

/// An error answer (`-errno`) to `unique`, for requests that never reached the file system.
pub fn error_answer(unique: u64, errno: i32) -> Answer {
    let mut out_header = [0u8; OUT_HEADER_LEN];
    out_header[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
    out_header[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    out_header[8..16].copy_from_slice(&unique.to_ne_bytes());
    Answer {
        out_header,
        payload_len: 0,
    }
}

/// Write an answer's header and payload size into the entry's header (the payload is already in place).
pub fn write_answer(header: &mut [u8], a: &Answer) {
    header[..OUT_HEADER_LEN].copy_from_slice(&a.out_header);
    header[ENT_OFFSET + 16..ENT_OFFSET + 20].copy_from_slice(&(a.payload_len as u32).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as the kernel fills it for a request of `op` op-header bytes and `payload` bytes.
    fn kernel_header(unique: u64, opcode: u32, op: &[u8], payload: usize) -> Vec<u8> {
        let mut h = vec![0u8; REQ_HEADER_LEN];
        let total = (IN_HEADER_LEN + op.len() + payload) as u32;
        h[0..4].copy_from_slice(&total.to_ne_bytes());
        h[4..8].copy_from_slice(&opcode.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        h[16..24].copy_from_slice(&7u64.to_ne_bytes()); // nodeid
        h[IN_OUT_LEN..IN_OUT_LEN + op.len()].copy_from_slice(op);
        h[ENT_OFFSET + 8..ENT_OFFSET + 16].copy_from_slice(&unique.to_ne_bytes());
        h[ENT_OFFSET + 16..ENT_OFFSET + 20].copy_from_slice(&(payload as u32).to_ne_bytes());
        h
    }

    #[test]
    fn the_struct_sizes_match_the_kernel_abi() {
        assert_eq!(REQ_HEADER_LEN, 288);
        let c = cmd_req(3, 0x1122_3344_5566_7788);
        assert_eq!(&c[0..8], &[0u8; 8]);
        assert_eq!(u64_at(&c, 8), 0x1122_3344_5566_7788);
        assert_eq!(u16::from_ne_bytes([c[16], c[17]]), 3);
        assert!(c[18..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_write_request_is_rebuilt_as_dev_fuse_delivers_it() {
        // FUSE_WRITE (16): a 40-byte fuse_write_in, then the data in the payload.
        let op: Vec<u8> = (0..40u8).collect();
        let h = kernel_header(42, 16, &op, 5);
        let inc = parse_incoming(&h, 1 << 20).unwrap();
        assert_eq!(
            inc,
            Incoming {
                commit_id: 42,
                op_len: 40,
                payload_len: 5,
                unique: 42
            }
        );
        let mut region = vec![0u8; 80 + 5];
        region[80..].copy_from_slice(b"hello");
        write_prefix(&h, &inc, &mut region[..80]);
        assert_eq!(u32_at(&region, 0) as usize, region.len());
        assert_eq!(u32_at(&region, 4), 16);
        assert_eq!(&region[40..80], &op[..]);
        assert_eq!(&region[80..], b"hello");
    }

    #[test]
    fn a_request_without_an_op_header_keeps_its_name_in_the_payload() {
        // FUSE_LOOKUP: arg 0 is empty, the name (with its NUL) is the payload.
        let h = kernel_header(9, 1, &[], 4);
        let inc = parse_incoming(&h, 8192).unwrap();
        assert_eq!((inc.op_len, inc.payload_len), (0, 4));
    }

    #[test]
    fn inconsistent_entries_are_refused_not_trusted() {
        let mut h = kernel_header(5, 16, &[0; 40], 10);
        assert!(matches!(
            parse_incoming(&h, 8),
            Err(BadEntry::Lengths { .. })
        ));
        // A total shorter than header + payload.
        h[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse_incoming(&h, 8192).is_err());
        // An op header longer than op_in.
        let h = kernel_header(5, 16, &[0; 40], 0);
        let mut h2 = h.clone();
        h2[0..4].copy_from_slice(&((IN_HEADER_LEN + OP_LEN + 1) as u32).to_ne_bytes());
        assert!(parse_incoming(&h2, 8192).is_err());
        let mut h3 = h;
        h3[ENT_OFFSET + 8..ENT_OFFSET + 16].copy_from_slice(&0u64.to_ne_bytes());
        assert_eq!(parse_incoming(&h3, 8192), Err(BadEntry::ZeroCommitId));
    }

    #[test]
    fn an_answer_split_across_slices_lands_in_header_and_payload() {
        let hdr = error_answer(77, 0).out_header;
        let mut payload = vec![0u8; 16];
        // The header split over two slices, then two data slices.
        let a = split_answer(&[&hdr[..10], &hdr[10..], b"abc", b"defg"], &mut payload).unwrap();
        assert_eq!(a.out_header, hdr);
        assert_eq!(a.payload_len, 7);
        assert_eq!(&payload[..7], b"abcdefg");
        let mut h = vec![0u8; REQ_HEADER_LEN];
        write_answer(&mut h, &a);
        assert_eq!(&h[..16], &hdr);
        assert_eq!(u32_at(&h, ENT_OFFSET + 16), 7);
    }

    #[test]
    fn answers_too_long_or_without_a_header_are_refused() {
        let mut small = [0u8; 4];
        assert_eq!(
            split_answer(&[&[0u8; 16][..], &[1u8; 5][..]], &mut small),
            Err(BadAnswer::TooLong {
                len: 5,
                capacity: 4
            })
        );
        assert_eq!(
            split_answer(&[&[0u8; 3][..]], &mut small),
            Err(BadAnswer::NoHeader(3))
        );
    }

    #[test]
    fn an_error_answer_carries_the_negative_errno() {
        let a = error_answer(5, libc::EIO);
        assert_eq!(u32_at(&a.out_header, 0), 16);
        assert_eq!(
            i32::from_ne_bytes(a.out_header[4..8].try_into().unwrap()),
            -libc::EIO
        );
        assert_eq!(u64_at(&a.out_header, 8), 5);
    }
}
