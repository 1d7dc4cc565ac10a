//! SSH keys on the client: the ephemeral ed25519 key `login` and `ci` certify, and reading
//! the public key `request` certifies.
//!
//! The ephemeral key lives in memory: this module writes no file, and its `Debug` shows
//! only the fingerprint. Only `ci --out` asks for the private key in OpenSSH form (in
//! zeroized memory) to write it to a 0600 file; `login` does only with `--keep-pending`, into
//! the in-memory runtime directory (see `pending`). The private half is
//! zeroized on drop by `ssh-key`.

use std::fmt;
use std::path::Path;

use rand::rngs::OsRng;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Public key files larger than this are not public keys (the server's limit is 16 KiB).
const MAX_PUBLIC_KEY_FILE: u64 = 16 * 1024;

/// An ed25519 key made for one `login`, never written to disk.
pub struct EphemeralKey {
    key: PrivateKey,
}

impl EphemeralKey {
    /// Makes a new random ed25519 key with the operating system's RNG.
    pub fn generate() -> Result<Self> {
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|err| Error::Key(err.to_string()))?;
        key.set_comment("moshca ephemeral key");
        Ok(EphemeralKey { key })
    }

    /// A key `login --keep-pending` kept (see `pending`), from its OpenSSH private key text.
    pub fn from_private_openssh(text: &str) -> Result<Self> {
        let key = PrivateKey::from_openssh(text).map_err(|err| Error::Key(err.to_string()))?;
        if key.algorithm() != Algorithm::Ed25519 || key.is_encrypted() {
            return Err(Error::Key(
                "a kept key must be a plain ed25519 key".to_owned(),
            ));
        }
        Ok(EphemeralKey { key })
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The public half as an OpenSSH line, for `CreateAccessRequest`.
    pub fn public_openssh(&self) -> Result<String> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(|err| Error::Key(err.to_string()))
    }

    /// `SHA256:...`, for logs.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The private key in OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`), for
    /// `ci --out`; zeroized when dropped.
    pub fn private_openssh(&self) -> Result<Zeroizing<String>> {
        self.key
            .to_openssh(LineEnding::LF)
            .map_err(|err| Error::Key(err.to_string()))
    }

    /// A copy of the key pair for ssh-agent; it is zeroized when dropped.
    pub fn ed25519_keypair(&self) -> Result<Ed25519Keypair> {
        match self.key.key_data() {
            KeypairData::Ed25519(pair) => Ok(pair.clone()),
            _ => Err(Error::Key("the ephemeral key is not ed25519".to_owned())),
        }
    }
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Reads an OpenSSH public key file (`ssh-ed25519 AAAA... comment`).
///
/// A private key file is refused with a message naming the mistake, so nobody sends a
/// private key's path by accident (its contents are never sent anywhere).
pub fn read_public_key(path: &Path) -> Result<PublicKey> {
    let bad = |detail: &str| Error::PublicKey {
        path: path.to_owned(),
        detail: detail.to_owned(),
    };
    let read_error = |source| Error::Read {
        what: "public key",
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_PUBLIC_KEY_FILE {
        return Err(bad("too large to be a public key"));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(read_error)?);
    parse_public_key(&text).map_err(|detail| bad(&detail))
}

/// Parses the text of a public key file; the error says what is wrong with it.
fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    let line = text.trim();
    if line.starts_with("-----BEGIN") {
        return Err("this is a private key; pass the public key (the .pub file)".to_owned());
    }
    if line.contains("-cert-v01@openssh.com") {
        return Err("this is a certificate; pass the public key (the .pub file)".to_owned());
    }
    if line.lines().count() != 1 {
        return Err("expected exactly one public key line".to_owned());
    }
    PublicKey::from_openssh(line).map_err(|err| format!("not an OpenSSH public key: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_keys_are_fresh_ed25519() {
        let a = EphemeralKey::generate().unwrap();
        let b = EphemeralKey::generate().unwrap();
        assert_eq!(a.public_key().algorithm(), Algorithm::Ed25519);
        assert_ne!(a.public_key(), b.public_key());
        let line = a.public_openssh().unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert_eq!(
            PublicKey::from_openssh(&line).unwrap().key_data(),
            a.public_key().key_data()
        );
        assert_eq!(
            a.ed25519_keypair().unwrap().public,
            *a.public_key().key_data().ed25519().unwrap()
        );
    }

    #[test]
    fn private_openssh_round_trips() {
        let key = EphemeralKey::generate().unwrap();
        let text = key.private_openssh().unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let parsed = PrivateKey::from_openssh(text.as_bytes()).unwrap();
        assert_eq!(parsed.public_key().key_data(), key.public_key().key_data());
    }

    #[test]
    fn ephemeral_key_debug_shows_no_secret() {
        let key = EphemeralKey::generate().unwrap();
        let secret = key.ed25519_keypair().unwrap().private.to_bytes();
        let debug = format!("{key:?}");
        assert!(debug.contains("SHA256:"), "{debug}");
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex));
    }

    #[test]
    fn public_key_files_parse() {
        let key = EphemeralKey::generate().unwrap();
        let parsed = parse_public_key(&format!("{}\n", key.public_openssh().unwrap())).unwrap();
        assert_eq!(parsed.key_data(), key.public_key().key_data());
    }

    #[test]
    fn private_keys_and_garbage_are_refused() {
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(
            parse_public_key(private)
                .unwrap_err()
                .contains("private key")
        );
        assert!(
            parse_public_key("ssh-ed25519 notbase64")
                .unwrap_err()
                .contains("OpenSSH")
        );
        assert!(
            parse_public_key("ssh-ed25519-cert-v01@openssh.com AAAA")
                .unwrap_err()
                .contains("certificate")
        );
    }

    #[test]
    fn reading_a_missing_file_names_it() {
        let err = read_public_key(Path::new("/nonexistent/id.pub")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/id.pub"), "{err}");
    }
}
