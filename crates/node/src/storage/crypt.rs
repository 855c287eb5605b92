//! The at-rest format of an encrypted data file: the emulation's stand-in for dm-crypt.
//!
//! Upstream encrypts the whole data partition with the key NUK ⊕ CUK. A userspace node cannot
//! map block devices, so every file below `data/` is sealed on its own with AES-256-GCM:
//!
//! ```text
//! magic "MTRPDATA" (8) | version 1 (1) | key check (16) | nonce (12) | ciphertext + tag (16)
//! ```
//!
//! * The *key check* is HMAC-SHA256(key, domain string), truncated: it tells "this is the wrong
//!   key" apart from "this file was damaged", so an operator gets an error that says which.
//!   It reveals nothing usable about the key (a truncated MAC of a constant).
//! * The nonce is random per write: files are rewritten rarely (credentials once, roles on
//!   change), far below the 2^32 writes per key at which random 96-bit nonces get risky.
//! * The header and the file's path inside `data/` are the AEAD's associated data, so moving
//!   an encrypted file to another name (e.g. the roles file over the credentials) or editing
//!   the header fails authentication just like editing the ciphertext.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of the data key (NUK ⊕ CUK) and of each half.
pub const KEY_LEN: usize = 32;

/// First bytes of every encrypted data file.
pub const MAGIC: &[u8; 8] = b"MTRPDATA";
/// Format version; bump when the layout changes.
const VERSION: u8 = 1;
/// Bytes of the truncated HMAC identifying the key.
const KEY_CHECK_LEN: usize = 16;
/// Domain separation for the key check, so the MAC cannot be confused with any other use.
const KEY_CHECK_DOMAIN: &[u8] = b"metropolis-node data key check v1";
/// Header length: magic, version, key check, nonce.
const HEADER_LEN: usize = MAGIC.len() + 1 + KEY_CHECK_LEN + NONCE_LEN;

/// Why a data file could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    /// The file does not start with the magic: it was written unencrypted (INSECURE storage)
    /// or by something else entirely.
    #[error("not an encrypted data file (no {MAGIC:?} header)")]
    NotEncrypted,
    /// A newer (or unknown) format version.
    #[error("unsupported data file format version {0}")]
    UnsupportedVersion(u8),
    /// The file was written with another key.
    #[error(
        "data cannot be decrypted with this key (the file was encrypted with a different node/cluster unlock key)"
    )]
    WrongKey,
    /// Right key, but authentication failed: the file was damaged, truncated or tampered with.
    #[error("data file is corrupt or was tampered with (authentication failed)")]
    Corrupt,
    /// The system RNG failed while encrypting.
    #[error("system random number generator failed")]
    Rng,
}

/// The data key NUK ⊕ CUK. Never printed (its `Debug` is redacted) and wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl DataKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.0[..]),
            KEY_CHECK_DOMAIN,
        );
        let mut out = [0u8; KEY_CHECK_LEN];
        out.copy_from_slice(&mac.as_ref()[..KEY_CHECK_LEN]);
        out
    }

    fn aead(&self) -> LessSafeKey {
        // Cannot fail: the key has exactly the length AES-256 needs.
        let key = UnboundKey::new(&AES_256_GCM, &self.0[..]).expect("32-byte AES-256 key");
        LessSafeKey::new(key)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

/// Whether `data` looks like an encrypted data file (starts with the magic).
pub fn is_encrypted(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Encrypts `plaintext` for storage at `path` (relative to the data directory).
pub fn seal(key: &DataKey, path: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptError::Rng)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&key.key_check());
    out.extend_from_slice(&nonce);
    let aad = associated_data(&out, path);
    let mut body = plaintext.to_vec();
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| CryptError::Corrupt)?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decrypts a file read from `path` (relative to the data directory).
pub fn open(key: &DataKey, path: &str, data: &[u8]) -> Result<Vec<u8>, CryptError> {
    if !is_encrypted(data) {
        return Err(CryptError::NotEncrypted);
    }
    if data.len() < HEADER_LEN + AES_256_GCM.tag_len() {
        return Err(CryptError::Corrupt);
    }
    let version = data[MAGIC.len()];
    if version != VERSION {
        return Err(CryptError::UnsupportedVersion(version));
    }
    let check_at = MAGIC.len() + 1;
    let nonce_at = check_at + KEY_CHECK_LEN;
    // Not a secret comparison: the check is stored in the clear next to the ciphertext.
    if data[check_at..nonce_at] != key.key_check() {
        return Err(CryptError::WrongKey);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&data[nonce_at..HEADER_LEN]);
    let aad = associated_data(&data[..HEADER_LEN], path);
    let mut body = data[HEADER_LEN..].to_vec();
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| CryptError::Corrupt)?;
    Ok(plain.to_vec())
}

fn associated_data(header: &[u8], path: &str) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(path.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let k = key(1);
        let a = seal(&k, "node/roles.pb", b"hello").expect("seal");
        let b = seal(&k, "node/roles.pb", b"hello").expect("seal");
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.windows(5).any(|w| w == b"hello"));
        assert_eq!(open(&k, "node/roles.pb", &a).expect("open"), b"hello");
        assert_eq!(open(&k, "node/roles.pb", &b).expect("open"), b"hello");
    }

    #[test]
    fn wrong_key_wrong_path_tamper_and_plain() {
        let sealed = seal(&key(1), "a", b"secret").expect("seal");
        assert_eq!(open(&key(2), "a", &sealed), Err(CryptError::WrongKey));
        assert_eq!(open(&key(1), "b", &sealed), Err(CryptError::Corrupt));
        for i in [HEADER_LEN - 1, HEADER_LEN, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 0x01;
            assert_eq!(open(&key(1), "a", &t), Err(CryptError::Corrupt), "byte {i}");
        }
        assert_eq!(
            open(&key(1), "a", &sealed[..HEADER_LEN]),
            Err(CryptError::Corrupt)
        );
        assert_eq!(open(&key(1), "a", b"plain"), Err(CryptError::NotEncrypted));
        let mut v = sealed.clone();
        v[MAGIC.len()] = 9;
        assert_eq!(
            open(&key(1), "a", &v),
            Err(CryptError::UnsupportedVersion(9))
        );
        assert_eq!(format!("{:?}", key(7)), "DataKey(<redacted>)");
    }
}
