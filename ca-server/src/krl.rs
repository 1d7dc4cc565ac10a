//! Encoder for OpenSSH key revocation lists (KRLs, `PROTOCOL.krl` format version 1).
//!
//! This module turns what moshca has revoked — certificate serials and key ids per CA,
//! plain public keys, and SHA-256 hashes of plain public keys — into the bytes sshd reads
//! through `RevokedKeys`.
//!
//! sshd treats a KRL it cannot parse as "every key is revoked", so one bad byte locks
//! everybody out. The encoder therefore refuses input it cannot encode safely instead of
//! writing something close to it. It never writes serial 0, a reversed range, a bitmap past
//! `u64::MAX` or longer than sshd's mpint limit, an empty section or subsection, a
//! signature, extension or unknown section, trailing bytes, or an "any CA" section.
//!
//! It must stay pure: no I/O and no clock (the caller passes `generated_at`). The output
//! depends only on the contents of the input, not on its order. Writing the file atomically,
//! checking it with `ssh-keygen -Q -l -f FILE`, and keeping `version` increasing are the
//! caller's job.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"SSHKRL\n\0";

pub mod decode;
const FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA256: u8 = 5;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;

/// Most serials one bitmap may span. OpenSSH reads the bitmap as an mpint and refuses
/// mpints longer than 2048 bytes (`SSHBUF_MAX_BIGNUM`, plus one leading zero). ssh-keygen's
/// own writer ignores this limit and then cannot read what it wrote.
const MAX_BITMAP_SPAN: u64 = 16_384;

/// Largest KRL sshd loads (`SSHBUF_SIZE_MAX`); a bigger file fails to load, which refuses
/// every public-key login.
pub const MAX_KRL_LEN: usize = 0x800_0000;

/// Plain public key types sshd knows, with the number of length-prefixed fields (type name
/// included) in their wire encoding. `ssh-dss` is left out: OpenSSH 10 cannot parse it, and
/// a CA key sshd cannot parse invalidates the whole KRL.
const KEY_TYPES: &[(&str, usize)] = &[
    ("ssh-ed25519", 2),
    ("sk-ssh-ed25519@openssh.com", 3),
    ("ecdsa-sha2-nistp256", 3),
    ("ecdsa-sha2-nistp384", 3),
    ("ecdsa-sha2-nistp521", 3),
    ("sk-ecdsa-sha2-nistp256@openssh.com", 4),
    ("ssh-rsa", 3),
];

/// A key revocation list, ready to encode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Krl {
    /// `krl_version`: must increase with every KRL published.
    pub version: u64,
    /// When the KRL was generated, in seconds since the Unix epoch.
    pub generated_at: u64,
    /// Free text shown by `ssh-keygen -Q -l`; must not contain NUL.
    pub comment: String,
    /// Certificates revoked by serial or key id, per issuing CA. Sections naming the same
    /// CA key are merged.
    pub ca_sections: Vec<CaSection>,
    /// Plain public key blobs (SSH wire encoding, never certificates) revoked outright:
    /// the key and every certificate for it. Listing a CA key here revokes every
    /// certificate that CA signed.
    pub explicit_keys: Vec<Vec<u8>>,
    /// SHA-256 hashes of plain public key blobs (see [`key_sha256`]), with the same effect
    /// as listing the keys in `explicit_keys`.
    pub sha256_keys: Vec<[u8; 32]>,
}

/// Certificates of one CA revoked by serial number or key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaSection {
    /// Plain public key blob of the CA that signed the certificates. It must not be empty:
    /// a KRL reads an empty CA key as "any CA".
    pub ca_key: Vec<u8>,
    /// Revoked serial numbers, in any order. Serial 0 means "no serial" to OpenSSH and is
    /// never written.
    pub serials: Vec<u64>,
    /// Revoked key ids, in any order; none may contain NUL.
    pub key_ids: Vec<String>,
}

/// Why a [`Krl`] cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A CA section has an empty CA key, which a KRL reads as "certificates of any CA".
    AnyCa,
    /// A key blob is not a well-formed plain public key of a type sshd knows.
    BadKeyBlob {
        /// Which blob: `"CA key"` or `"explicit key"`.
        role: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The comment or a key id contains NUL, which makes OpenSSH reject the whole KRL.
    Nul {
        /// `"comment"` or `"key id"`.
        field: &'static str,
    },
    /// The encoded KRL would be larger than sshd loads.
    TooLarge,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AnyCa => f.write_str("KRL certificate section has an empty CA key (any CA)"),
            Error::BadKeyBlob { role, reason } => write!(f, "KRL {role} blob {reason}"),
            Error::Nul { field } => write!(f, "KRL {field} contains a NUL byte"),
            Error::TooLarge => write!(f, "KRL would exceed {MAX_KRL_LEN} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// SHA-256 of a plain public key blob: the digest behind its `SHA256:` fingerprint, as
/// [`Krl::sha256_keys`] wants it.
#[must_use]
pub fn key_sha256(key_blob: &[u8]) -> [u8; 32] {
    Sha256::digest(key_blob).into()
}

impl Krl {
    /// Encodes the KRL, choosing per run of serials the smallest of the list, range and
    /// bitmap encodings.
    ///
    /// # Errors
    ///
    /// Refuses, rather than writing a KRL sshd might reject or misread: an empty CA key
    /// ([`Error::AnyCa`]), a CA or explicit key that is not a plain public key of a type
    /// sshd knows ([`Error::BadKeyBlob`]), NUL in the comment or a key id
    /// ([`Error::Nul`]), and a KRL over [`MAX_KRL_LEN`] bytes ([`Error::TooLarge`]).
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        if self.comment.contains('\0') {
            return Err(Error::Nul { field: "comment" });
        }
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        put_u32(&mut out, FORMAT_VERSION);
        put_u64(&mut out, self.version);
        put_u64(&mut out, self.generated_at);
        put_u64(&mut out, 0); // flags: none are defined
        put_string(&mut out, b"")?; // reserved
        put_string(&mut out, self.comment.as_bytes())?;

        for (ca_key, (serials, key_ids)) in merge_ca_sections(&self.ca_sections)? {
            if serials.is_empty() && key_ids.is_empty() {
                continue;
            }
            let mut body = Vec::new();
            put_string(&mut body, ca_key)?;
            put_string(&mut body, b"")?; // reserved
            let runs = runs(&serials);
            for piece in plan(&runs) {
                put_piece(&mut body, &runs[piece.start..piece.end], piece.encoding)?;
            }
            if !key_ids.is_empty() {
                let mut data = Vec::new();
                for key_id in key_ids {
                    put_string(&mut data, key_id.as_bytes())?;
                }
                put_section(&mut body, CERT_KEY_ID, &data)?;
            }
            put_section(&mut out, SECTION_CERTIFICATES, &body)?;
        }

        let mut keys: Vec<&[u8]> = Vec::with_capacity(self.explicit_keys.len());
        for key in &self.explicit_keys {
            check_key_blob(key, "explicit key")?;
            keys.push(key);
        }
        keys.sort_unstable();
        keys.dedup();
        if !keys.is_empty() {
            let mut body = Vec::new();
            for key in keys {
                put_string(&mut body, key)?;
            }
            put_section(&mut out, SECTION_EXPLICIT_KEY, &body)?;
        }

        // OpenSSH wants hashes in numeric order, as big-endian integers: that is byte order.
        let mut hashes: Vec<&[u8; 32]> = self.sha256_keys.iter().collect();
        hashes.sort_unstable();
        hashes.dedup();
        if !hashes.is_empty() {
            let mut body = Vec::new();
            for hash in hashes {
                put_string(&mut body, hash)?;
            }
            put_section(&mut out, SECTION_FINGERPRINT_SHA256, &body)?;
        }

        if out.len() > MAX_KRL_LEN {
            return Err(Error::TooLarge);
        }
        Ok(out)
    }
}

/// Serials (sorted, unique, without 0) and key ids (sorted, unique) revoked per CA key.
type Revocations<'a> = (Vec<u64>, Vec<&'a str>);

/// Checks every CA section and merges those naming the same CA key, in CA key order.
fn merge_ca_sections(sections: &[CaSection]) -> Result<BTreeMap<&[u8], Revocations<'_>>, Error> {
    let mut merged: BTreeMap<&[u8], Revocations<'_>> = BTreeMap::new();
    for section in sections {
        if section.ca_key.is_empty() {
            return Err(Error::AnyCa);
        }
        check_key_blob(&section.ca_key, "CA key")?;
        if section.key_ids.iter().any(|id| id.contains('\0')) {
            return Err(Error::Nul { field: "key id" });
        }
        let (serials, key_ids) = merged.entry(&section.ca_key).or_default();
        serials.extend(section.serials.iter().filter(|&&serial| serial != 0));
        key_ids.extend(section.key_ids.iter().map(String::as_str));
    }
    for (serials, key_ids) in merged.values_mut() {
        serials.sort_unstable();
        serials.dedup();
        key_ids.sort_unstable();
        key_ids.dedup();
    }
    Ok(merged)
}

/// Checks that `blob` is a plain public key OpenSSH reads (see [`check_plain_key`]). A CA
/// key sshd cannot parse makes it reject the whole KRL; a certificate blob would silently
/// never match.
fn check_key_blob(blob: &[u8], role: &'static str) -> Result<(), Error> {
    check_plain_key(blob).map_err(|reason| Error::BadKeyBlob { role, reason })
}

/// Most bits in an RSA modulus OpenSSH reads (`SSHBUF_MAX_BIGNUM`, 2048 bytes): a bigger
/// key is "invalid format" to sshd and `ssh-keygen`.
pub const MAX_RSA_BITS: usize = 16_384;
/// Fewest bits in an RSA modulus OpenSSH reads (`SSH_RSA_MINIMUM_MODULUS_SIZE`).
const MIN_OPENSSH_RSA_BITS: usize = 1024;

/// Checks that OpenSSH would read `blob` (SSH wire encoding) as a plain public key, by the
/// rules of its `sshkey.c`: a type OpenSSH 10 still knows (no DSA, no certificate), exactly
/// the fields of that type, an ed25519 key of 32 bytes, an RSA modulus of 1024 to
/// [`MAX_RSA_BITS`] bits and a positive exponent, and an ECDSA point that is uncompressed,
/// on the named curve, not the identity, and within the bounds `sshkey_ec_validate_public`
/// checks.
///
/// This is the one rule for "can be listed in a KRL": the encoder applies it to every key
/// it writes, revocation by key applies it before storing a key, and the subject key check
/// applies it before signing.
///
/// # Errors
///
/// What is wrong, as a phrase completing "the key ...".
pub fn check_plain_key(blob: &[u8]) -> Result<(), &'static str> {
    let mut fields = Vec::new();
    let mut rest = blob;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>().ok_or("is truncated")?;
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err("is truncated");
        }
        let (field, tail) = tail.split_at(len);
        fields.push(field);
        rest = tail;
    }
    let Some(&name) = fields.first() else {
        return Err("is empty");
    };
    if name.ends_with(b"-cert-v01@openssh.com") {
        return Err("is a certificate, not a plain key");
    }
    if name == b"ssh-dss" {
        return Err("is a DSA key, which OpenSSH 10 no longer reads");
    }
    let Some(&(_, field_count)) = KEY_TYPES.iter().find(|(n, _)| n.as_bytes() == name) else {
        return Err("has an unknown key type");
    };
    if fields.len() != field_count {
        return Err("has the wrong number of fields for its key type");
    }
    match name {
        b"ssh-ed25519" | b"sk-ssh-ed25519@openssh.com" if fields[1].len() != 32 => {
            Err("holds an ed25519 key that is not 32 bytes")
        }
        b"ssh-rsa" => check_rsa(fields[1], fields[2]),
        b"ecdsa-sha2-nistp256" | b"sk-ecdsa-sha2-nistp256@openssh.com" => {
            check_ec_curve(fields[1], b"nistp256")?;
            check_ec_point::<p256::NistP256>(fields[2])
        }
        b"ecdsa-sha2-nistp384" => {
            check_ec_curve(fields[1], b"nistp384")?;
            check_ec_point::<p384::NistP384>(fields[2])
        }
        b"ecdsa-sha2-nistp521" => {
            check_ec_curve(fields[1], b"nistp521")?;
            check_ec_point::<p521::NistP521>(fields[2])
        }
        _ => Ok(()),
    }
}

/// The number of significant bits of a non-negative SSH `mpint`, or why it is not one.
fn mpint_bits(mpint: &[u8]) -> Result<usize, &'static str> {
    if mpint.first().is_some_and(|&b| b & 0x80 != 0) {
        return Err("holds a negative RSA number");
    }
    let significant = match mpint.iter().position(|&b| b != 0) {
        Some(start) => &mpint[start..],
        None => return Ok(0),
    };
    Ok(significant.len() * 8 - significant[0].leading_zeros() as usize)
}

fn check_rsa(e: &[u8], n: &[u8]) -> Result<(), &'static str> {
    if mpint_bits(e)? == 0 {
        return Err("holds an RSA exponent of zero");
    }
    let bits = mpint_bits(n)?;
    if bits > MAX_RSA_BITS {
        return Err("is an RSA key over 16384 bits, which OpenSSH does not read");
    }
    if bits < MIN_OPENSSH_RSA_BITS {
        return Err("is an RSA key under 1024 bits, which OpenSSH does not read");
    }
    Ok(())
}

fn check_ec_curve(curve: &[u8], expected: &[u8]) -> Result<(), &'static str> {
    if curve == expected {
        Ok(())
    } else {
        Err("names a curve that does not match its key type")
    }
}

/// The checks OpenSSH makes on an ECDSA public point: `sshbuf_get_ec` takes only the
/// uncompressed form and the point must decode on the curve; `sshkey_ec_validate_public`
/// refuses the identity and, in the releases that still carry the older checks,
/// coordinates of at most half the order's bits or not below `order - 1`.
fn check_ec_point<C>(point: &[u8]) -> Result<(), &'static str>
where
    C: p256::elliptic_curve::CurveArithmetic,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
    p256::elliptic_curve::AffinePoint<C>: p256::elliptic_curve::sec1::FromEncodedPoint<C>
        + p256::elliptic_curve::sec1::ToEncodedPoint<C>,
{
    use p256::elliptic_curve::ff::{Field as _, PrimeField as _};
    let size = <p256::elliptic_curve::FieldBytesSize<C> as p256::elliptic_curve::generic_array::typenum::Unsigned>::USIZE;
    let Some((&0x04, coordinates)) = point.split_first() else {
        return Err("holds an ECDSA point that is not in uncompressed form");
    };
    if coordinates.len() != 2 * size {
        return Err("holds an ECDSA point of the wrong length for its curve");
    }
    if p256::elliptic_curve::PublicKey::<C>::from_sec1_bytes(point).is_err() {
        return Err("holds an ECDSA point that is not on its curve");
    }
    let order_bits = C::Scalar::NUM_BITS as usize;
    let minus_one = -C::Scalar::ONE;
    for coordinate in coordinates.chunks_exact(size) {
        if mpint_bits(&[&[0u8][..], coordinate].concat())? <= order_bits / 2 {
            return Err("holds an ECDSA point with a coordinate OpenSSH refuses as too small");
        }
        let repr = p256::elliptic_curve::FieldBytes::<C>::clone_from_slice(coordinate);
        let below_order: Option<C::Scalar> = C::Scalar::from_repr(repr).into();
        if below_order.is_none_or(|s| s == minus_one) {
            return Err("holds an ECDSA point with a coordinate OpenSSH refuses as too large");
        }
    }
    Ok(())
}

/// Consecutive serials `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    lo: u64,
    hi: u64,
}

/// Splits sorted unique serials into maximal runs of consecutive serials.
fn runs(serials: &[u64]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for &serial in serials {
        match runs.last_mut() {
            Some(run) if run.hi.checked_add(1) == Some(serial) => run.hi = serial,
            _ => runs.push(Run {
                lo: serial,
                hi: serial,
            }),
        }
    }
    runs
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    List,
    Range,
    Bitmap,
}

/// One serial subsection: `runs[start..end]` written as `encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    encoding: Encoding,
    start: usize,
    end: usize,
}

/// Bytes of a subsection's type and length.
const FRAME: i128 = 5;
/// Bytes of a range subsection.
const RANGE_COST: i128 = FRAME + 16;
/// Bytes of a bitmap subsection besides `span / 8`: frame, offset, mpint length, and one
/// byte because an mpint of `span` bits whose top bit is set takes exactly `span / 8 + 1`
/// bytes (the leading zero byte makes up for the rounding when `span` is a multiple of 8).
const BITMAP_BASE_COST: i128 = FRAME + 8 + 4 + 1;

/// Splits `runs` into the subsections that encode them in the fewest bytes.
///
/// Dynamic programming over runs: `best[k]` is the smallest encoding of `runs[..k]`, whose
/// last piece is `last[k - 1]`. A list of runs `i..=j` costs `5 + 8 * serials`, so the best
/// `i` is a running minimum of `best[i] - 8 * serials before i`. A bitmap of runs `i..=j`
/// costs `18 + (hi_j + 1 - lo_i) / 8` if it spans at most `MAX_BITMAP_SPAN`; writing
/// `hi_j + 1 = 8a + r` and `lo_i = 8b + t`, that is `18 + a - b - (r < t)`, so for each
/// residue `t` a sliding-window minimum of `best[i] - b` finds the best `i`. The whole plan
/// is linear in the number of runs.
fn plan(runs: &[Run]) -> Vec<Piece> {
    let mut best: Vec<i128> = Vec::with_capacity(runs.len() + 1);
    best.push(0);
    let mut last: Vec<Piece> = Vec::with_capacity(runs.len());
    let mut serials_before: i128 = 0;
    let mut list_start: (i128, usize) = (i128::MAX, 0);
    // Per residue of `lo % 8`: candidate bitmap starts (run index, best[i] - lo / 8), keys
    // increasing from front to back.
    let mut windows: [VecDeque<(usize, i128)>; 8] = Default::default();

    for (j, run) in runs.iter().enumerate() {
        let key = best[j] - 8 * serials_before;
        if key < list_start.0 {
            list_start = (key, j);
        }
        serials_before += i128::from(run.hi - run.lo) + 1;
        let mut choice = (
            list_start.0 + 8 * serials_before + FRAME,
            Piece {
                encoding: Encoding::List,
                start: list_start.1,
                end: j + 1,
            },
        );

        let range = best[j] + RANGE_COST;
        if range < choice.0 {
            choice = (
                range,
                Piece {
                    encoding: Encoding::Range,
                    start: j,
                    end: j + 1,
                },
            );
        }

        let key = best[j] - i128::from(run.lo / 8);
        let window = &mut windows[(run.lo % 8) as usize];
        while window.back().is_some_and(|&(_, k)| k >= key) {
            window.pop_back();
        }
        window.push_back((j, key));
        let end = i128::from(run.hi) + 1;
        let (a, r) = (end / 8, end % 8);
        for (t, window) in (0..).zip(windows.iter_mut()) {
            while window
                .front()
                .is_some_and(|&(i, _)| run.hi - runs[i].lo >= MAX_BITMAP_SPAN)
            {
                window.pop_front();
            }
            if let Some(&(i, key)) = window.front() {
                let cost = key + a - i128::from(r < t) + BITMAP_BASE_COST;
                if cost < choice.0 {
                    choice = (
                        cost,
                        Piece {
                            encoding: Encoding::Bitmap,
                            start: i,
                            end: j + 1,
                        },
                    );
                }
            }
        }

        best.push(choice.0);
        last.push(choice.1);
    }

    let mut pieces = Vec::new();
    let mut end = runs.len();
    while end > 0 {
        let piece = last[end - 1];
        pieces.push(piece);
        end = piece.start;
    }
    pieces.reverse();
    pieces
}

/// Writes `runs` (non-empty) as one serial subsection.
fn put_piece(out: &mut Vec<u8>, runs: &[Run], encoding: Encoding) -> Result<(), Error> {
    let mut data = Vec::new();
    match encoding {
        Encoding::List => {
            for run in runs {
                for serial in run.lo..=run.hi {
                    put_u64(&mut data, serial);
                }
            }
            put_section(out, CERT_SERIAL_LIST, &data)
        }
        Encoding::Range => {
            put_u64(&mut data, runs[0].lo);
            put_u64(&mut data, runs[runs.len() - 1].hi);
            put_section(out, CERT_SERIAL_RANGE, &data)
        }
        Encoding::Bitmap => {
            // Starting at the first serial keeps the bitmap clear of serial 0 and its top
            // bit on the last serial, so it never reaches past u64::MAX.
            let offset = runs[0].lo;
            let span = runs[runs.len() - 1].hi - offset + 1;
            let mut bits = vec![0u8; span.div_ceil(8) as usize];
            let top = bits.len() - 1;
            for run in runs {
                for serial in run.lo..=run.hi {
                    let bit = serial - offset;
                    bits[top - (bit / 8) as usize] |= 1 << (bit % 8);
                }
            }
            put_u64(&mut data, offset);
            put_mpint(&mut data, &bits)?;
            put_section(out, CERT_SERIAL_BITMAP, &data)
        }
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Error> {
    put_u32(
        out,
        u32::try_from(bytes.len()).map_err(|_| Error::TooLarge)?,
    );
    out.extend_from_slice(bytes);
    Ok(())
}

/// Writes a non-negative big-endian magnitude as an SSH mpint: no superfluous leading
/// zeros, and one zero byte in front if the top bit is set (else it would read negative).
fn put_mpint(out: &mut Vec<u8>, magnitude: &[u8]) -> Result<(), Error> {
    let first = magnitude
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(magnitude.len());
    let magnitude = &magnitude[first..];
    if magnitude.first().is_some_and(|&byte| byte & 0x80 != 0) {
        put_u32(
            out,
            u32::try_from(magnitude.len() + 1).map_err(|_| Error::TooLarge)?,
        );
        out.push(0);
        out.extend_from_slice(magnitude);
        Ok(())
    } else {
        put_string(out, magnitude)
    }
}

/// Writes a section or subsection: type byte, then the data as a string.
fn put_section(out: &mut Vec<u8>, kind: u8, data: &[u8]) -> Result<(), Error> {
    out.push(kind);
    put_string(out, data)
}

#[cfg(test)]
mod tests {
    use super::decode::{CertSection, Sub, decode};
    use super::*;

    use std::cell::Cell;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Instant;

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    const MAX: u64 = u64::MAX;

    fn string(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    /// A well-formed ed25519 public key blob that is no real key.
    fn fake_key(tag: u8) -> Vec<u8> {
        [string(b"ssh-ed25519"), string(&[tag; 32])].concat()
    }

    fn with_serials(serials: &[u64]) -> Krl {
        Krl {
            ca_sections: vec![CaSection {
                ca_key: fake_key(0x11),
                serials: serials.to_vec(),
                key_ids: Vec::new(),
            }],
            ..Krl::default()
        }
    }

    /// The serial subsections, raw, of a KRL revoking `serials` under one fake CA.
    fn serial_subsection_bytes(serials: &[u64]) -> Vec<u8> {
        let bytes = with_serials(serials).encode().unwrap();
        // header with empty comment (44), section frame (5), CA key (4 + 51), reserved (4)
        bytes[44 + 5 + 55 + 4..].to_vec()
    }

    fn only_section(serials: &[u64]) -> CertSection {
        let decoded = decode(&with_serials(serials).encode().unwrap()).unwrap();
        let [section] = <[CertSection; 1]>::try_from(decoded.certs).unwrap();
        section
    }

    fn subsection(kind: u8, data: &[&[u8]]) -> Vec<u8> {
        let data = data.concat();
        [vec![kind], string(&data)].concat()
    }

    #[test]
    fn header_is_exact() {
        let krl = Krl {
            version: 7,
            generated_at: 0x0102_0304_0506_0708,
            comment: "hi".into(),
            ..Krl::default()
        };
        let mut want = b"SSHKRL\n\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        assert_eq!(krl.encode().unwrap(), want);
        let decoded = decode(&want).unwrap();
        assert_eq!(
            (decoded.version, decoded.generated_at),
            (7, 0x0102_0304_0506_0708)
        );
        assert_eq!(decoded.comment, "hi");
    }

    #[test]
    fn serial_list_section_is_exact() {
        let krl = Krl {
            generated_at: 2,
            ..with_serials(&[100, 1, 5, 5, 0])
        };
        let ca = fake_key(0x11);
        let mut body = string(&ca);
        body.extend_from_slice(&string(b""));
        body.extend(subsection(
            0x20,
            &[
                &1u64.to_be_bytes(),
                &5u64.to_be_bytes(),
                &100u64.to_be_bytes(),
            ],
        ));
        let mut want = Krl {
            generated_at: 2,
            ..Krl::default()
        }
        .encode()
        .unwrap();
        want.push(1);
        want.extend(string(&body));
        assert_eq!(krl.encode().unwrap(), want);
    }

    #[test]
    fn serial_range_is_exact() {
        let serials: Vec<u64> = (10..=50).collect();
        assert_eq!(
            serial_subsection_bytes(&serials),
            subsection(0x21, &[&10u64.to_be_bytes(), &50u64.to_be_bytes()])
        );
    }

    #[test]
    fn serial_bitmap_is_exact() {
        // bits 0, 2, 3 and 8 from offset 1
        assert_eq!(
            serial_subsection_bytes(&[9, 1, 3, 4]),
            subsection(0x22, &[&1u64.to_be_bytes(), &string(&[0x01, 0x0d])])
        );
        // the top bit set needs a leading zero byte
        assert_eq!(
            serial_subsection_bytes(&[1, 8]),
            subsection(0x22, &[&1u64.to_be_bytes(), &string(&[0x00, 0x81])])
        );
    }

    #[test]
    fn mixed_serials_pick_the_cheapest_encoding_per_run() {
        let mut serials: Vec<u64> = (1..=100).collect();
        serials.extend([200, 203, 205, 10_000, 20_000]);
        let section = only_section(&serials);
        assert_eq!(
            section.subs,
            [
                Sub::Range(1, 100),
                Sub::Bitmap {
                    offset: 200,
                    mpint: vec![0b10_1001]
                },
                Sub::List(vec![10_000, 20_000]),
            ]
        );
        assert_eq!(section.serial_bytes, 21 + 18 + 21);
    }

    #[test]
    fn serial_zero_is_never_written() {
        assert_eq!(
            serial_subsection_bytes(&[0, 7, 0]),
            subsection(0x20, &[&7u64.to_be_bytes()])
        );
        let bytes = with_serials(&[0, 0]).encode().unwrap();
        assert_eq!(
            bytes,
            Krl::default().encode().unwrap(),
            "empty section omitted"
        );
        // a bitmap starting at 1 must not grow down to 0
        let section = only_section(&[0, 1, 2, 3]);
        assert_eq!(section.serials(), [1, 2, 3]);
    }

    #[test]
    fn serials_near_u64_max() {
        assert_eq!(
            serial_subsection_bytes(&[MAX, MAX - 2, MAX - 1]),
            subsection(0x22, &[&(MAX - 2).to_be_bytes(), &string(&[0x07])])
        );
        let top: Vec<u64> = (MAX - 199..=MAX).collect();
        assert_eq!(
            serial_subsection_bytes(&top),
            subsection(0x21, &[&(MAX - 199).to_be_bytes(), &MAX.to_be_bytes()])
        );
        assert_eq!(
            serial_subsection_bytes(&[MAX, 0, 1]),
            subsection(0x20, &[&1u64.to_be_bytes(), &MAX.to_be_bytes()])
        );
        // dense serials ending at MAX: bitmaps, none past the top
        let dense: Vec<u64> = (0..20_000).map(|i| MAX - 2 * i).collect();
        let section = only_section(&dense);
        let mut want = dense.clone();
        want.sort_unstable();
        assert_eq!(section.serials(), want);
    }

    #[test]
    fn bitmaps_stay_within_the_mpint_limit() {
        // 16384 bits exactly, top bit set: 2048 bytes plus the leading zero
        let mut serials: Vec<u64> = (0..8192).map(|i| 1 + 2 * i).collect();
        serials.push(16_384);
        let section = only_section(&serials);
        let [Sub::Bitmap { offset: 1, mpint }] = &section.subs[..] else {
            panic!("expected one bitmap, got {:?}", section.subs);
        };
        assert_eq!((mpint.len(), mpint[0]), (2049, 0));
        assert_eq!(section.serials(), serials);

        // a span of 16385 bits needs 2049 bytes without a leading zero: must split
        let odd: Vec<u64> = (0..=8192).map(|i| 1 + 2 * i).collect();
        assert_eq!(odd.last(), Some(&16_385));
        let section = only_section(&odd);
        assert_eq!(section.subs.len(), 2, "{:?}", section.subs.len());
        assert_eq!(section.serials(), odd);

        let odd: Vec<u64> = (0..20_001).map(|i| 1 + 2 * i).collect();
        let section = only_section(&odd);
        assert!(section.subs.iter().all(|s| matches!(s, Sub::Bitmap { .. })));
        assert_eq!(section.subs.len(), 3);
        assert_eq!(section.serials(), odd);
    }

    #[test]
    fn key_ids_are_sorted_and_deduplicated() {
        let krl = Krl {
            ca_sections: vec![CaSection {
                ca_key: fake_key(1),
                serials: vec![],
                key_ids: vec!["zed".into(), "alice".into(), "zed".into(), "".into()],
            }],
            ..Krl::default()
        };
        let decoded = decode(&krl.encode().unwrap()).unwrap();
        assert_eq!(
            decoded.certs[0].subs,
            [Sub::KeyIds(vec!["".into(), "alice".into(), "zed".into()])]
        );
    }

    #[test]
    fn nul_bytes_are_refused() {
        let mut krl = with_serials(&[1]);
        krl.ca_sections[0].key_ids.push("a\0b".into());
        assert_eq!(krl.encode(), Err(Error::Nul { field: "key id" }));
        let krl = Krl {
            comment: "x\0".into(),
            ..Krl::default()
        };
        assert_eq!(krl.encode(), Err(Error::Nul { field: "comment" }));
    }

    #[test]
    fn bad_ca_keys_are_refused() {
        let mut krl = with_serials(&[1]);
        krl.ca_sections[0].ca_key.clear();
        assert_eq!(krl.encode(), Err(Error::AnyCa));

        let cert = [
            string(b"ssh-ed25519-cert-v01@openssh.com"),
            string(&[0; 32]),
        ]
        .concat();
        let truncated = fake_key(1)[..40].to_vec();
        let short = [string(b"ssh-ed25519"), string(&[0; 31])].concat();
        let unknown = [string(b"ssh-foo"), string(&[0; 32])].concat();
        let extra = [fake_key(1), string(b"")].concat();
        for blob in [cert, truncated, short, unknown, extra] {
            krl.ca_sections[0].ca_key = blob.clone();
            assert!(
                matches!(krl.encode(), Err(Error::BadKeyBlob { role: "CA key", .. })),
                "{blob:?}"
            );
            let krl = Krl {
                explicit_keys: vec![blob.clone()],
                ..Krl::default()
            };
            assert!(
                matches!(
                    krl.encode(),
                    Err(Error::BadKeyBlob {
                        role: "explicit key",
                        ..
                    })
                ),
                "{blob:?}"
            );
        }
    }

    /// An RSA public key blob with a modulus of exactly `bits` bits.
    fn rsa_blob(bits: usize) -> Vec<u8> {
        let mut n = vec![0u8; bits.div_ceil(8)];
        n[0] = 1 << ((bits - 1) % 8);
        *n.last_mut().unwrap() |= 1;
        if n[0] & 0x80 != 0 {
            n.insert(0, 0);
        }
        [string(b"ssh-rsa"), string(&[1, 0, 1]), string(&n)].concat()
    }

    /// Blobs of real ECDSA keys on each curve, made by ssh-key.
    fn ecdsa_blobs() -> Vec<Vec<u8>> {
        use ssh_key::{Algorithm, EcdsaCurve, PrivateKey};
        [
            EcdsaCurve::NistP256,
            EcdsaCurve::NistP384,
            EcdsaCurve::NistP521,
        ]
        .into_iter()
        .map(|curve| {
            PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ecdsa { curve })
                .unwrap()
                .public_key()
                .to_bytes()
                .unwrap()
        })
        .collect()
    }

    /// `blob` with its last field replaced by `point`.
    fn with_point(blob: &[u8], point: &[u8]) -> Vec<u8> {
        let name_len = u32::from_be_bytes(blob[..4].try_into().unwrap()) as usize;
        let curve_at = 4 + name_len;
        let curve_len =
            u32::from_be_bytes(blob[curve_at..curve_at + 4].try_into().unwrap()) as usize;
        [&blob[..curve_at + 4 + curve_len], &string(point)].concat()
    }

    /// Ways to break a real ECDSA key's point: off the curve, compressed, the identity,
    /// truncated.
    fn broken_points(blob: &[u8]) -> Vec<Vec<u8>> {
        let point_at = blob.len() - {
            let mut fields = Vec::new();
            let mut rest = blob;
            while !rest.is_empty() {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                fields.push(len);
                rest = &rest[4 + len..];
            }
            *fields.last().unwrap()
        };
        let point = &blob[point_at..];
        let mut off_curve = point.to_vec();
        *off_curve.last_mut().unwrap() ^= 1;
        let size = (point.len() - 1) / 2;
        let mut compressed = vec![0x02 | (point[point.len() - 1] & 1)];
        compressed.extend_from_slice(&point[1..=size]);
        vec![
            with_point(blob, &off_curve),
            with_point(blob, &compressed),
            with_point(blob, &[0]),
            with_point(blob, &point[..point.len() - 1]),
        ]
    }

    #[test]
    fn keys_openssh_cannot_read_are_not_plain_keys() {
        assert_eq!(check_plain_key(&rsa_blob(1024)), Ok(()));
        assert_eq!(check_plain_key(&rsa_blob(MAX_RSA_BITS)), Ok(()));
        for bits in [MAX_RSA_BITS + 1, MAX_RSA_BITS + 8, 90_000, 1023, 512] {
            let err = check_plain_key(&rsa_blob(bits)).unwrap_err();
            assert!(err.contains("RSA key"), "{bits}: {err}");
        }
        let negative = [string(b"ssh-rsa"), string(&[1, 0, 1]), string(&[0x80; 256])].concat();
        assert!(check_plain_key(&negative).is_err());
        let dsa = [
            string(b"ssh-dss"),
            string(&[1; 129]),
            string(&[1; 21]),
            string(&[1; 129]),
            string(&[1; 129]),
        ]
        .concat();
        assert!(check_plain_key(&dsa).unwrap_err().contains("DSA"));
        for blob in ecdsa_blobs() {
            assert_eq!(check_plain_key(&blob), Ok(()));
            for broken in broken_points(&blob) {
                assert!(check_plain_key(&broken).is_err(), "{broken:?}");
            }
            // A point of one curve under another curve's name.
            let relabelled = [
                string(b"ecdsa-sha2-nistp256"),
                string(b"nistp384"),
                blob[blob.len() - 97..].to_vec(),
            ]
            .concat();
            assert!(check_plain_key(&relabelled).is_err());
        }
        // And the encoder refuses them as explicit keys.
        let krl = Krl {
            explicit_keys: vec![rsa_blob(MAX_RSA_BITS + 1)],
            ..Krl::default()
        };
        assert!(matches!(krl.encode(), Err(Error::BadKeyBlob { .. })));
    }

    #[test]
    fn keys_and_hashes_are_sorted_deduplicated_and_empty_sections_omitted() {
        let krl = Krl {
            ca_sections: vec![CaSection {
                ca_key: fake_key(9),
                ..CaSection::default()
            }],
            explicit_keys: vec![fake_key(3), fake_key(2), fake_key(3)],
            sha256_keys: vec![[0xff; 32], [0; 32], [0xff; 32], [7; 32]],
            ..Krl::default()
        };
        let decoded = decode(&krl.encode().unwrap()).unwrap();
        assert!(decoded.certs.is_empty());
        assert_eq!(decoded.explicit_keys, [fake_key(2), fake_key(3)]);
        assert_eq!(decoded.sha256_keys, [[0; 32], [7; 32], [0xff; 32]]);
        assert_eq!(Krl::default().encode().unwrap().len(), 44);
    }

    #[test]
    fn sections_for_the_same_ca_are_merged() {
        let section = |serials: Vec<u64>, key_ids: Vec<String>| CaSection {
            ca_key: fake_key(5),
            serials,
            key_ids,
        };
        let krl = Krl {
            ca_sections: vec![
                section(vec![3, 1], vec!["b".into()]),
                CaSection {
                    ca_key: fake_key(4),
                    serials: vec![7],
                    key_ids: vec![],
                },
                section(vec![2, 3], vec!["a".into(), "b".into()]),
            ],
            ..Krl::default()
        };
        let decoded = decode(&krl.encode().unwrap()).unwrap();
        assert_eq!(decoded.certs.len(), 2);
        assert_eq!(decoded.certs[0].ca_key, fake_key(4));
        assert_eq!(decoded.certs[1].ca_key, fake_key(5));
        assert_eq!(decoded.certs[1].serials(), [1, 2, 3]);
        assert_eq!(
            decoded.certs[1].subs.last(),
            Some(&Sub::KeyIds(vec!["a".into(), "b".into()]))
        );
    }

    /// Fewest bytes for the serial subsections, by trying every split (quadratic).
    fn reference_cost(serials: &[u64]) -> usize {
        let runs = runs(serials);
        let mut best = vec![0usize; runs.len() + 1];
        for end in 1..=runs.len() {
            best[end] = usize::MAX;
            let mut count = 0;
            for start in (0..end).rev() {
                count += (runs[start].hi - runs[start].lo + 1) as usize;
                let span = runs[end - 1].hi - runs[start].lo + 1;
                let mut cost = 5 + 8 * count;
                if start + 1 == end {
                    cost = cost.min(21);
                }
                if span <= MAX_BITMAP_SPAN {
                    cost = cost.min(18 + (span / 8) as usize);
                }
                best[end] = best[end].min(best[start] + cost);
            }
        }
        best[runs.len()]
    }

    fn clustered_serials() -> impl Strategy<Value = Vec<u64>> {
        let start = prop_oneof![0u64..3000, (0u64..3000).prop_map(|d| MAX - d)];
        let clusters =
            prop::collection::vec((start.clone(), 1u64..300, 1u64..12), 0..6).prop_map(|pieces| {
                let mut serials = Vec::new();
                for (start, count, stride) in pieces {
                    serials.extend((0..count).map_while(|i| start.checked_add(i * stride)));
                }
                serials
            });
        // random subsets of a small window make costs close, where a wrong model shows
        let sprinkled =
            (start, prop::collection::vec(0u64..400, 0..120)).prop_map(|(base, offsets)| {
                offsets
                    .into_iter()
                    .filter_map(|offset| base.checked_add(offset))
                    .collect()
            });
        prop_oneof![clusters, sprinkled]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn encoding_is_lossless_and_optimal(serials in clustered_serials()) {
            let mut want = serials.clone();
            want.sort_unstable();
            want.dedup();
            want.retain(|&s| s != 0);
            let decoded = decode(&with_serials(&serials).encode().unwrap()).unwrap();
            match &decoded.certs[..] {
                [] => prop_assert!(want.is_empty()),
                [section] => {
                    prop_assert_eq!(section.serials(), want.clone());
                    prop_assert_eq!(section.serial_bytes, reference_cost(&want));
                }
                more => prop_assert!(false, "{} sections", more.len()),
            }
        }
    }

    // Against the real ssh-keygen.

    /// The `ssh-keygen` these tests compare with: `$MOSHCA_E2E_OPENSSH_DIR/bin/ssh-keygen`
    /// when set (scripts/test.sh runs them again that way with OpenSSH 10.0), else the one
    /// on `PATH`. Its path is in every failure message, so a failure names the version.
    fn ssh_keygen() -> PathBuf {
        match std::env::var_os("MOSHCA_E2E_OPENSSH_DIR").filter(|dir| !dir.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("bin/ssh-keygen"),
            None => PathBuf::from("ssh-keygen"),
        }
    }

    fn run(command: &mut Command) -> std::process::Output {
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?} (is OpenSSH installed?): {e}"));
        assert!(
            output.status.success(),
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes().filter(|&c| c != b'=') {
            let value = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
            acc = (acc << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    /// Key blob of an OpenSSH public key or certificate file.
    fn blob_of(path: &Path) -> Vec<u8> {
        let text = std::fs::read_to_string(path).unwrap();
        base64_decode(text.split_whitespace().nth(1).unwrap())
    }

    struct Fixture {
        dir: tempfile::TempDir,
        next: Cell<u32>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                dir: tempfile::tempdir().unwrap(),
                next: Cell::new(0),
            }
        }

        fn fresh(&self, stem: &str) -> PathBuf {
            let n = self.next.get();
            self.next.set(n + 1);
            self.dir.path().join(format!("{stem}{n}"))
        }

        /// Makes an ed25519 key without comment; returns the private key's path.
        fn key(&self) -> PathBuf {
            let path = self.fresh("key");
            run(Command::new(ssh_keygen())
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
                .arg(&path));
            path
        }

        /// Signs `user`'s public key with the CA key `ca`; returns the certificate's path.
        fn sign(&self, ca: &Path, user: &Path, key_id: &str, serial: u64) -> PathBuf {
            let stem = self.fresh("cert");
            let public = stem.with_extension("pub");
            std::fs::copy(user.with_extension("pub"), &public).unwrap();
            run(Command::new(ssh_keygen())
                .args(["-q", "-s"])
                .arg(ca)
                .args(["-I", key_id, "-n", "user", "-z", &serial.to_string()])
                .arg(&public));
            PathBuf::from(format!("{}-cert.pub", stem.display()))
        }

        /// Runs `ssh-keygen -Q -l` on `krl` and `keys`: returns the listing and, per key,
        /// whether ssh-keygen says it is revoked.
        fn query(&self, krl: &Krl, keys: &[&Path]) -> (String, Vec<bool>) {
            let path = self.fresh("krl");
            std::fs::write(&path, krl.encode().unwrap()).unwrap();
            let output = Command::new(ssh_keygen())
                .args(["-Q", "-l", "-f"])
                .arg(&path)
                .args(keys)
                .output()
                .unwrap();
            let stdout = String::from_utf8(output.stdout).unwrap();
            let lines: Vec<&str> = stdout.lines().collect();
            assert!(
                lines.len() >= keys.len(),
                "ssh-keygen -Q: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let (listing, verdicts) = lines.split_at(lines.len() - keys.len());
            let revoked: Vec<bool> = keys
                .iter()
                .zip(verdicts)
                .map(|(key, line)| {
                    // ssh-keygen prints "PATH: VERDICT" or "PATH (COMMENT): VERDICT"
                    let rest = line.strip_prefix(&key.display().to_string());
                    let (comment, verdict) = rest
                        .and_then(|rest| rest.rsplit_once(": "))
                        .unwrap_or_else(|| panic!("unexpected ssh-keygen -Q line {line:?}"));
                    assert!(
                        comment.is_empty() || comment.starts_with(" (") && comment.ends_with(')'),
                        "unexpected ssh-keygen -Q line {line:?}"
                    );
                    match verdict {
                        "ok" => false,
                        "REVOKED" => true,
                        _ => panic!("unexpected ssh-keygen -Q line {line:?}"),
                    }
                })
                .collect();
            let want_status = i32::from(revoked.contains(&true));
            assert_eq!(
                output.status.code(),
                Some(want_status),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            (listing.join("\n"), revoked)
        }
    }

    fn serial_krl(ca: &Path, serials: Vec<u64>) -> Krl {
        Krl {
            version: 1,
            generated_at: 1_700_000_000,
            comment: "moshca test".into(),
            ca_sections: vec![CaSection {
                ca_key: blob_of(&ca.with_extension("pub")),
                serials,
                key_ids: vec![],
            }],
            ..Krl::default()
        }
    }

    /// Signs one certificate per `(ca, serial, revoked)` and checks ssh-keygen agrees.
    fn check_serials(fx: &Fixture, krl: &Krl, user: &Path, cases: &[(&Path, u64, bool)]) -> String {
        let certs: Vec<PathBuf> = cases
            .iter()
            .map(|&(ca, serial, _)| fx.sign(ca, user, "id", serial))
            .collect();
        let paths: Vec<&Path> = certs.iter().map(PathBuf::as_path).collect();
        let (listing, revoked) = fx.query(krl, &paths);
        for (&(_, serial, want), got) in cases.iter().zip(revoked) {
            assert_eq!(
                got, want,
                "serial {serial}: revoked {got}, wanted {want}\n{listing}"
            );
        }
        listing
    }

    #[test]
    fn ssh_keygen_revokes_by_serial_in_each_encoding() {
        let fx = Fixture::new();
        let (ca, other_ca, user) = (fx.key(), fx.key(), fx.key());
        let mut serials = vec![0, 10, 20_000, 40_000];
        serials.extend(100_000..=100_999);
        serials.extend([200_000, 200_003, 200_005]);
        let krl = serial_krl(&ca, serials);

        let decoded = decode(&krl.encode().unwrap()).unwrap();
        let subs = &decoded.certs[0].subs;
        assert!(matches!(subs[0], Sub::List(_)), "{subs:?}");
        assert!(matches!(subs[1], Sub::Range(100_000, 100_999)), "{subs:?}");
        assert!(
            matches!(
                subs[2],
                Sub::Bitmap {
                    offset: 200_000,
                    ..
                }
            ),
            "{subs:?}"
        );

        let (ca, other) = (ca.as_path(), other_ca.as_path());
        let listing = check_serials(
            &fx,
            &krl,
            &user,
            &[
                (ca, 0, false),
                (ca, 10, true),
                (ca, 11, false),
                (ca, 40_000, true),
                (ca, 99_999, false),
                (ca, 100_000, true),
                (ca, 100_500, true),
                (ca, 100_999, true),
                (ca, 101_000, false),
                (ca, 200_000, true),
                (ca, 200_001, false),
                (ca, 200_003, true),
                (ca, 200_005, true),
                (ca, 200_006, false),
                (other, 10, false),
                (other, 100_500, false),
                (other, 200_003, false),
            ],
        );
        for line in [
            "# Comment: moshca test",
            "serial: 10",
            "serial: 100000-100999",
            "serial: 200005",
        ] {
            assert!(
                listing.lines().any(|l| l == line),
                "{line:?} missing from\n{listing}"
            );
        }
    }

    #[test]
    fn ssh_keygen_revokes_serials_near_u64_max() {
        let fx = Fixture::new();
        let (ca, user) = (fx.key(), fx.key());
        let mut serials = vec![MAX - 2000, MAX - 2, MAX - 1, MAX];
        serials.extend(MAX - 1000..=MAX - 500);
        let krl = serial_krl(&ca, serials);
        let kinds: Vec<u8> = decode(&krl.encode().unwrap()).unwrap().certs[0]
            .subs
            .iter()
            .map(|s| match s {
                Sub::List(_) => 0x20,
                Sub::Range(..) => 0x21,
                Sub::Bitmap { .. } => 0x22,
                Sub::KeyIds(_) => 0x23,
            })
            .collect();
        assert_eq!(kinds, [0x20, 0x21, 0x22]);
        let ca = ca.as_path();
        check_serials(
            &fx,
            &krl,
            &user,
            &[
                (ca, MAX, true),
                (ca, MAX - 1, true),
                (ca, MAX - 2, true),
                (ca, MAX - 3, false),
                (ca, MAX - 499, false),
                (ca, MAX - 500, true),
                (ca, MAX - 1000, true),
                (ca, MAX - 1001, false),
                (ca, MAX - 1999, false),
                (ca, MAX - 2000, true),
            ],
        );
        let krl = serial_krl(ca, (MAX - 199..=MAX).collect());
        check_serials(&fx, &krl, &user, &[(ca, MAX, true), (ca, MAX - 200, false)]);
    }

    #[test]
    fn ssh_keygen_reads_bitmaps_at_the_mpint_limit() {
        let fx = Fixture::new();
        let (ca, user) = (fx.key(), fx.key());
        // one bitmap of exactly 16384 bits, top bit set
        let mut serials: Vec<u64> = (0..8192).map(|i| 1 + 2 * i).collect();
        serials.push(16_384);
        let ca = ca.as_path();
        let cases = [
            (ca, 1, true),
            (ca, 2, false),
            (ca, 16_383, true),
            (ca, 16_384, true),
            (ca, 16_385, false),
        ];
        check_serials(&fx, &serial_krl(ca, serials), &user, &cases);
        // a span of one bit more must be split
        let odd: Vec<u64> = (0..=8192).map(|i| 1 + 2 * i).collect();
        check_serials(
            &fx,
            &serial_krl(ca, odd),
            &user,
            &[(ca, 16_383, true), (ca, 16_384, false), (ca, 16_385, true)],
        );
        // ssh-keygen -k writes this set as one 2501-byte bitmap and then cannot read it
        let odd: Vec<u64> = (0..20_001).map(|i| 1 + 2 * i).collect();
        check_serials(
            &fx,
            &serial_krl(ca, odd),
            &user,
            &[
                (ca, 16_385, true),
                (ca, 16_386, false),
                (ca, 40_001, true),
                (ca, 40_003, false),
            ],
        );
    }

    #[test]
    fn ssh_keygen_revokes_by_key_id_key_and_hash() {
        let fx = Fixture::new();
        let (ca, other_ca) = (fx.key(), fx.key());
        let users: Vec<PathBuf> = (0..4).map(|_| fx.key()).collect();
        let certs = [
            fx.sign(&ca, &users[0], "alice", 1),
            fx.sign(&ca, &users[1], "bob", 2),
            fx.sign(&ca, &users[2], "carol", 3),
            fx.sign(&ca, &users[3], "dave", 4),
            fx.sign(&other_ca, &users[3], "alice", 5),
        ];
        let plain: Vec<PathBuf> = users.iter().map(|u| u.with_extension("pub")).collect();
        let krl = Krl {
            version: 2,
            generated_at: 1_700_000_000,
            comment: String::new(),
            ca_sections: vec![CaSection {
                ca_key: blob_of(&ca.with_extension("pub")),
                serials: vec![],
                key_ids: vec!["alice".into()],
            }],
            explicit_keys: vec![blob_of(&plain[1])],
            sha256_keys: vec![key_sha256(&blob_of(&plain[2]))],
        };
        let keys: Vec<&Path> = certs.iter().chain(&plain).map(PathBuf::as_path).collect();
        let (listing, revoked) = fx.query(&krl, &keys);
        assert_eq!(
            revoked,
            // certs: by key id, explicit key, hash, none, key id of another CA;
            // plain keys: a key id revokes no plain key
            [true, true, true, false, false, false, true, true, false],
            "{listing}"
        );
        assert!(listing.contains("id: alice"), "{listing}");
        let hex: String = key_sha256(&blob_of(&plain[2]))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(
            listing.contains(&format!("hash: SHA256:{hex}")),
            "{listing}"
        );

        // revoking the CA key revokes what it signed
        let krl = Krl {
            explicit_keys: vec![blob_of(&other_ca.with_extension("pub"))],
            ..Krl::default()
        };
        let (listing, revoked) = fx.query(&krl, &[&certs[3], &certs[4]]);
        assert_eq!(revoked, [false, true], "{listing}");
    }

    #[test]
    fn ssh_keygen_reads_exactly_the_keys_check_plain_key_accepts() {
        let fx = Fixture::new();
        let reads = |blob: &[u8]| {
            let path = fx.fresh("pub");
            let text = format!("{} {}\n", key_type(blob), base64(blob));
            std::fs::write(&path, text).unwrap();
            Command::new(ssh_keygen())
                .args(["-l", "-f"])
                .arg(&path)
                .output()
                .unwrap()
                .status
                .success()
        };
        let mut cases = vec![
            rsa_blob(2048),
            rsa_blob(MAX_RSA_BITS),
            rsa_blob(MAX_RSA_BITS + 1),
        ];
        for blob in ecdsa_blobs() {
            cases.extend(broken_points(&blob));
            cases.push(blob);
        }
        for blob in cases {
            assert_eq!(
                reads(&blob),
                check_plain_key(&blob).is_ok(),
                "ssh-keygen and check_plain_key disagree on {} ({:?})",
                key_type(&blob),
                check_plain_key(&blob)
            );
        }
    }

    fn key_type(blob: &[u8]) -> String {
        let len = u32::from_be_bytes(blob[..4].try_into().unwrap()) as usize;
        String::from_utf8(blob[4..4 + len].to_vec()).unwrap()
    }

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn ssh_keygen_accepts_an_empty_krl() {
        let fx = Fixture::new();
        let (ca, user) = (fx.key(), fx.key());
        let cert = fx.sign(&ca, &user, "id", 1);
        let (_, revoked) = fx.query(&Krl::default(), &[&cert]);
        assert_eq!(revoked, [false]);
    }

    /// Serials the property test signs certificates for once, chosen around the edges of
    /// bytes, bitmap spans and u64.
    const POOL: &[u64] = &[
        0,
        1,
        2,
        3,
        7,
        8,
        9,
        100,
        1000,
        16_383,
        16_384,
        16_385,
        16_386,
        32_769,
        1 << 32,
        (1 << 63) - 1,
        1 << 63,
        MAX - 16_384,
        MAX - 16_383,
        MAX - 64,
        MAX - 8,
        MAX - 7,
        MAX - 2,
        MAX - 1,
        MAX,
    ];

    /// A cluster of serials: `count` serials `stride` apart from `start`.
    fn cluster() -> impl Strategy<Value = (u64, u64, u64)> {
        let start = prop_oneof![
            3 => (prop::sample::select(POOL), -40i64..40).prop_map(|(p, d)| p.saturating_add_signed(d)),
            1 => any::<u64>(),
            1 => 0u64..100_000,
            1 => (0u64..100_000).prop_map(|d| MAX - d),
        ];
        let shape = prop_oneof![
            3 => (1u64..64, Just(1u64)),
            1 => (1u64..100_000, Just(1u64)),
            3 => (1u64..3000, 2u64..24),
        ];
        (start, shape).prop_map(|(start, (count, stride))| (start, count, stride))
    }

    #[test]
    fn ssh_keygen_agrees_with_set_membership() {
        let fx = Fixture::new();
        let (ca, other_ca, user) = (fx.key(), fx.key(), fx.key());
        let pool: Vec<(u64, PathBuf)> = POOL
            .iter()
            .map(|&serial| (serial, fx.sign(&ca, &user, "id", serial)))
            .collect();
        let foreign = [
            fx.sign(&other_ca, &user, "id", 1),
            fx.sign(&other_ca, &user, "id", MAX),
        ];

        let mut runner = TestRunner::new(Config {
            cases: 32,
            failure_persistence: None,
            ..Config::default()
        });
        let strategy = (
            prop::collection::vec(cluster(), 1..6),
            any::<prop::sample::Index>(),
        );
        let outcome = runner.run(&strategy, |(clusters, pick)| {
            let mut serials = Vec::new();
            for (start, count, stride) in clusters {
                serials.extend((0..count).map_while(|i| start.checked_add(i * stride)));
            }
            let krl = serial_krl(&ca, serials.clone());
            serials.sort_unstable();
            serials.dedup();
            let revoked = |serial: u64| serial != 0 && serials.binary_search(&serial).is_ok();

            // two more certificates: a revoked serial and its successor
            let picked = serials[pick.index(serials.len())];
            let mut samples: Vec<(u64, PathBuf)> = pool.clone();
            for serial in [Some(picked), picked.checked_add(1)].into_iter().flatten() {
                samples.push((serial, fx.sign(&ca, &user, "id", serial)));
            }
            let mut keys: Vec<&Path> = samples.iter().map(|(_, p)| p.as_path()).collect();
            keys.extend(foreign.iter().map(PathBuf::as_path));
            let (_, got) = fx.query(&krl, &keys);
            let mut want: Vec<bool> = samples.iter().map(|&(serial, _)| revoked(serial)).collect();
            want.extend([false, false]);
            let wrong: Vec<String> = samples
                .iter()
                .map(|(serial, _)| serial.to_string())
                .chain(["other CA 1".into(), "other CA MAX".into()])
                .zip(want.iter().zip(&got))
                .filter(|(_, (want, got))| want != got)
                .map(|(serial, (want, _))| format!("{serial} (want revoked={want})"))
                .collect();
            prop_assert!(wrong.is_empty(), "ssh-keygen disagrees on {:?}", wrong);
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }

    /// splitmix64: reproducible serials without a dependency.
    fn random_serials(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    #[test]
    #[ignore = "benchmark: cargo test --release -- --ignored --nocapture krl"]
    fn encode_100k_serials_benchmark() {
        let mut next = random_serials(1);
        let random: Vec<u64> = (0..100_000).map(|_| next()).collect();
        let mut clustered = Vec::new();
        let mut serial = 1u64;
        while clustered.len() < 100_000 {
            let run = 1 + next() % 20;
            clustered.extend(serial..serial + run);
            serial += run + 1 + next() % 200;
        }
        clustered.truncate(100_000);
        let sequential: Vec<u64> = (1..=1_000_000u64)
            .filter(|_| next().is_multiple_of(10))
            .collect();
        for (name, serials) in [
            ("random u64", random),
            ("clustered (runs 1-20, gaps 1-200)", clustered),
            ("~10% of serials 1..=1000000", sequential),
        ] {
            let krl = Krl {
                ca_sections: vec![CaSection {
                    ca_key: fake_key(1),
                    serials: serials.clone(),
                    key_ids: vec![],
                }],
                ..Krl::default()
            };
            let started = Instant::now();
            let bytes = krl.encode().unwrap();
            let elapsed = started.elapsed();
            println!(
                "krl bench {name}: {} serials -> {} bytes ({:.2} bytes/serial) in {elapsed:?}",
                serials.len(),
                bytes.len(),
                bytes.len() as f64 / serials.len() as f64
            );
            let decoded = decode(&bytes).unwrap();
            assert_eq!(decoded.certs[0].serials().len(), serials.len());
        }
    }
}
