//! Reading a KRL back, as strictly as OpenSSH's `ssh_krl_from_blob` and in the canonical
//! form [`super::Krl::encode`] promises (sorted, deduplicated, nothing empty, nothing left
//! over). Anything OpenSSH would refuse (and so refuse every login) is an error here. It
//! checks what the encoder wrote: in the unit tests and the fuzz targets.

use super::MAGIC;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("need {n} bytes, {} left", self.0.len()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One subsection of a certificate section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sub {
    /// Serials, one by one.
    List(Vec<u64>),
    /// Every serial from the first to the second, inclusive.
    Range(u64, u64),
    /// Serial `offset + N` for every bit N set in the mpint.
    Bitmap {
        /// The serial of bit 0.
        offset: u64,
        /// The bitmap as its mpint bytes.
        mpint: Vec<u8>,
    },
    /// Key ids.
    KeyIds(Vec<String>),
}

impl Sub {
    /// The serials this subsection revokes. Ranges are expanded, so this is for KRLs of
    /// test size (a range of ten million or more panics).
    pub fn serials(&self) -> Vec<u64> {
        match self {
            Sub::List(serials) => serials.clone(),
            Sub::Range(lo, hi) => {
                assert!(hi - lo < 10_000_000, "range too big to expand in a test");
                (*lo..=*hi).collect()
            }
            Sub::Bitmap { offset, mpint } => {
                let mut serials = Vec::new();
                for (i, byte) in mpint.iter().rev().enumerate() {
                    for bit in 0..8 {
                        if byte & (1 << bit) != 0 {
                            serials.push(offset + (i as u64) * 8 + bit);
                        }
                    }
                }
                serials
            }
            Sub::KeyIds(_) => Vec::new(),
        }
    }
}

/// A certificate section: what is revoked under one CA key.
#[derive(Debug)]
pub struct CertSection {
    /// The CA key's wire blob.
    pub ca_key: Vec<u8>,
    /// Its subsections, in order.
    pub subs: Vec<Sub>,
    /// Bytes taken by the serial subsections, framing included.
    pub serial_bytes: usize,
}

impl CertSection {
    /// Every serial the section revokes, in order.
    pub fn serials(&self) -> Vec<u64> {
        self.subs.iter().flat_map(Sub::serials).collect()
    }

    /// Every key id the section revokes.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.subs
            .iter()
            .filter_map(|s| match s {
                Sub::KeyIds(ids) => Some(ids),
                _ => None,
            })
            .flatten()
            .map(String::as_str)
    }
}

/// A whole KRL as read back.
#[derive(Debug)]
pub struct Decoded {
    /// `krl_version`.
    pub version: u64,
    /// `generated_date`.
    pub generated_at: u64,
    /// The comment.
    pub comment: String,
    /// Certificate sections, in order.
    pub certs: Vec<CertSection>,
    /// Explicitly revoked key blobs.
    pub explicit_keys: Vec<Vec<u8>>,
    /// SHA-256 hashes of revoked keys.
    pub sha256_keys: Vec<[u8; 32]>,
}

/// Reads `bytes` as a KRL, or says what OpenSSH (or the canonical form) would object to.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut r = Reader(bytes);
    if r.take(8)? != MAGIC {
        return Err("bad magic".into());
    }
    if r.u32()? != 1 {
        return Err("bad format version".into());
    }
    let version = r.u64()?;
    let generated_at = r.u64()?;
    if r.u64()? != 0 {
        return Err("flags set".into());
    }
    if !r.string()?.is_empty() {
        return Err("reserved field not empty".into());
    }
    let comment = r.string()?;
    if comment.contains(&0) {
        return Err("NUL in comment".into());
    }
    let comment = String::from_utf8(comment.to_vec()).map_err(|e| e.to_string())?;
    let mut decoded = Decoded {
        version,
        generated_at,
        comment,
        certs: Vec::new(),
        explicit_keys: Vec::new(),
        sha256_keys: Vec::new(),
    };
    let mut seen = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let body = r.string()?;
        if body.is_empty() {
            return Err(format!("empty section {kind}"));
        }
        if kind != 1 && seen.contains(&kind) {
            return Err(format!("section {kind} repeated"));
        }
        seen.push(kind);
        let mut s = Reader(body);
        match kind {
            1 => decoded.certs.push(decode_cert_section(body)?),
            2 => {
                while !s.is_empty() {
                    decoded.explicit_keys.push(s.string()?.to_vec());
                }
                if !decoded.explicit_keys.is_sorted_by(|a, b| a < b) {
                    return Err("explicit keys not sorted and unique".into());
                }
            }
            5 => {
                while !s.is_empty() {
                    let hash: [u8; 32] = s
                        .string()?
                        .try_into()
                        .map_err(|_| "hash is not 32 bytes".to_string())?;
                    decoded.sha256_keys.push(hash);
                }
                if !decoded.sha256_keys.is_sorted_by(|a, b| a < b) {
                    return Err("hashes not sorted and unique".into());
                }
            }
            other => return Err(format!("unexpected section type {other}")),
        }
    }
    Ok(decoded)
}

fn decode_cert_section(body: &[u8]) -> Result<CertSection, String> {
    let mut r = Reader(body);
    let ca_key = r.string()?.to_vec();
    if ca_key.is_empty() {
        return Err("any-CA section".into());
    }
    if !r.string()?.is_empty() {
        return Err("reserved field not empty".into());
    }
    if r.is_empty() {
        return Err("certificate section without subsections".into());
    }
    let mut section = CertSection {
        ca_key,
        subs: Vec::new(),
        serial_bytes: 0,
    };
    while !r.is_empty() {
        let kind = r.u8()?;
        let data = r.string()?;
        if data.is_empty() {
            return Err(format!("empty subsection {kind:#x}"));
        }
        let mut d = Reader(data);
        let sub = match kind {
            0x20 => {
                let mut serials = Vec::new();
                while !d.is_empty() {
                    serials.push(d.u64()?);
                }
                if serials.contains(&0) || !serials.is_sorted_by(|a, b| a < b) {
                    return Err(format!("bad serial list {serials:?}"));
                }
                Sub::List(serials)
            }
            0x21 => {
                let (lo, hi) = (d.u64()?, d.u64()?);
                if lo == 0 || lo > hi {
                    return Err(format!("bad range {lo}..={hi}"));
                }
                Sub::Range(lo, hi)
            }
            0x22 => {
                let offset = d.u64()?;
                let mpint = d.string()?;
                let magnitude = match mpint {
                    [] => return Err("empty bitmap".into()),
                    [0, next, ..] if next & 0x80 != 0 => &mpint[1..],
                    [0, ..] => return Err("superfluous leading zero in bitmap".into()),
                    [first, ..] if first & 0x80 != 0 => return Err("negative bitmap".into()),
                    _ => mpint,
                };
                if magnitude.len() > 2048 {
                    return Err(format!("bitmap of {} bytes", magnitude.len()));
                }
                let top_bit =
                    magnitude.len() as u64 * 8 - u64::from(magnitude[0].leading_zeros()) - 1;
                if offset.checked_add(top_bit).is_none() {
                    return Err("bitmap past u64::MAX".into());
                }
                if offset == 0 && magnitude[magnitude.len() - 1] & 1 != 0 {
                    return Err("bitmap revokes serial 0".into());
                }
                Sub::Bitmap {
                    offset,
                    mpint: mpint.to_vec(),
                }
            }
            0x23 => {
                let mut ids = Vec::new();
                while !d.is_empty() {
                    let id = d.string()?;
                    if id.contains(&0) {
                        return Err("NUL in key id".into());
                    }
                    ids.push(String::from_utf8(id.to_vec()).map_err(|e| e.to_string())?);
                }
                if !ids.is_sorted_by(|a, b| a < b) {
                    return Err("key ids not sorted and unique".into());
                }
                Sub::KeyIds(ids)
            }
            other => return Err(format!("unexpected subsection type {other:#x}")),
        };
        if !d.is_empty() {
            return Err(format!("trailing bytes in subsection {kind:#x}"));
        }
        if kind != 0x23 {
            section.serial_bytes += 5 + data.len();
        }
        section.subs.push(sub);
    }
    let serials = section.serials();
    if !serials.is_sorted_by(|a, b| a < b) {
        return Err("serial subsections overlap or are out of order".into());
    }
    Ok(section)
}
