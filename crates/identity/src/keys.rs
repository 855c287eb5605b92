//! Ed25519 keys: the node key, join key, owner key and CA keys of a Metropolis cluster.
//!
//! Private keys are kept as their 32-byte seed. On disk they are PKCS#8 **v1** (RFC 8410: the
//! algorithm and the seed, no public key) because that is the only Ed25519 form OpenSSL 3.0,
//! Go and BoringSSL all read; rcgen and ring emit v2 (with the public key), which they refuse.
//! Reading accepts both. PKCS#8 is encoded and decoded by RustCrypto's `pkcs8` and `ed25519`
//! crates. The 64-byte form (seed || public key) is Go's `ed25519.PrivateKey` and is what the
//! SealedConfiguration join key, the pki crate's etcd key blobs and metroctl's owner key hold.
//!
//! Secret bytes this module hands out (seed, 64-byte form, PKCS#8 DER and PEM) are wrapped in
//! [`Zeroizing`], and a [`SigningKey`] wipes its seed when dropped, so copies of a private key
//! do not linger in freed memory. ring's expanded signing key, cached inside [`SigningKey`],
//! is ring's to manage and is not wiped.

use std::fmt;
use std::path::Path;

use ed25519::pkcs8::{ALGORITHM_OID, EncodePrivateKey as _, KeypairBytes};
use pkcs8::der::Decode as _;
use pkcs8::der::asn1::OctetStringRef;
use pkcs8::{LineEnding, PrivateKeyInfoRef};
use ring::rand::SecureRandom;
use ring::signature::{self, KeyPair};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::files;

/// Length of an Ed25519 seed (the private key proper).
pub const SEED_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of Go's `ed25519.PrivateKey`: seed followed by public key.
pub const KEYPAIR_LEN: usize = SEED_LEN + PUBLIC_KEY_LEN;

/// PEM label of PKCS#8 private keys.
pub const PKCS8_PEM_TAG: &str = "PRIVATE KEY";
/// PEM label metroctl uses for the raw 64-byte initial owner key.
pub const OWNER_KEY_PEM_TAG: &str = "METROPOLIS INITIAL OWNER PRIVATE KEY";

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Wraps 32 raw public key bytes.
    pub const fn from_bytes(bytes: [u8; PUBLIC_KEY_LEN]) -> Self {
        PublicKey(bytes)
    }

    /// Wraps a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| Error::BadKeyLength {
            what: "Ed25519 public key",
            expected: PUBLIC_KEY_LEN,
            got: bytes.len(),
        })?;
        Ok(PublicKey(arr))
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// Checks an Ed25519 signature of `msg` made by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        if sig.len() != SIGNATURE_LEN {
            return Err(Error::BadKeyLength {
                what: "Ed25519 signature",
                expected: SIGNATURE_LEN,
                got: sig.len(),
            });
        }
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .map_err(|_| Error::SignatureInvalid(format!("not a signature by {self}")))
    }

    /// The Metropolis node ID for this key (see [`crate::node_id::node_id`]).
    pub fn node_id(&self) -> String {
        crate::node_id::node_id(self)
    }
}

impl std::str::FromStr for PublicKey {
    type Err = Error;

    /// Parses 64 hex digits (the [`Display`](fmt::Display) form).
    fn from_str(s: &str) -> Result<Self> {
        let bytes = hex::decode(s).map_err(|_| Error::BadKeyLength {
            what: "hex Ed25519 public key (64 hex digits)",
            expected: PUBLIC_KEY_LEN * 2,
            got: s.len(),
        })?;
        PublicKey::from_slice(&bytes)
    }
}

impl AsRef<[u8]> for PublicKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 private key. Its seed is wiped when the key is dropped.
pub struct SigningKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    // Cached so signing does not redo the scalar multiplication; derived from `seed` only.
    pair: signature::Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// Builds the key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        // ring's from_seed_unchecked only fails on a wrong length, which the array type excludes.
        Self::from_seed_slice(seed).expect("ring accepts every 32-byte Ed25519 seed")
    }

    /// Builds the key from a seed slice, checking its length.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self> {
        if seed.len() != SEED_LEN {
            return Err(Error::BadKeyLength {
                what: "Ed25519 seed",
                expected: SEED_LEN,
                got: seed.len(),
            });
        }
        let mut own = Zeroizing::new([0u8; SEED_LEN]);
        own.copy_from_slice(seed);
        let pair = signature::Ed25519KeyPair::from_seed_unchecked(&own[..])
            .map_err(|e| Error::Pkcs8(format!("seed rejected: {e}")))?;
        let public = PublicKey::from_slice(pair.public_key().as_ref())?;
        Ok(SigningKey {
            seed: own,
            pair,
            public,
        })
    }

    /// Generates a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; SEED_LEN]);
        ring::rand::SystemRandom::new()
            .fill(&mut seed[..])
            .map_err(|_| Error::Rng)?;
        Self::from_seed_slice(&seed[..])
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The public half, borrowed (rcgen's key traits hand out references).
    pub(crate) fn public_key_ref(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `msg` (pure Ed25519, 64-byte signature).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    /// The 32-byte seed. Secret.
    pub fn seed(&self) -> &[u8; SEED_LEN] {
        &self.seed
    }

    /// Go's 64-byte `ed25519.PrivateKey` form: seed || public key. Secret, wiped when dropped.
    pub fn to_keypair_bytes(&self) -> Zeroizing<[u8; KEYPAIR_LEN]> {
        let mut out = Zeroizing::new([0u8; KEYPAIR_LEN]);
        out[..SEED_LEN].copy_from_slice(&self.seed[..]);
        out[SEED_LEN..].copy_from_slice(self.public.as_bytes());
        out
    }

    /// Reads the 64-byte form, rejecting it if the public half does not match the seed.
    pub fn from_keypair_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != KEYPAIR_LEN {
            return Err(Error::BadKeyLength {
                what: "Ed25519 private key (seed || public key)",
                expected: KEYPAIR_LEN,
                got: bytes.len(),
            });
        }
        let key = Self::from_seed_slice(&bytes[..SEED_LEN])?;
        if key.public.as_bytes()[..] != bytes[SEED_LEN..] {
            return Err(Error::KeyMismatch);
        }
        Ok(key)
    }

    /// The PKCS#8 encoder's view of this key: the seed without the public key, which is what
    /// makes the encoder write v1.
    fn pkcs8_v1(&self) -> KeypairBytes {
        KeypairBytes {
            secret_key: *self.seed,
            public_key: None,
        }
    }

    /// PKCS#8 v1 DER, the form OpenSSL and Go accept. Secret, wiped when dropped.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8_v1()
            .to_pkcs8_der()
            .expect("a 32-byte seed always encodes as PKCS#8")
            .to_bytes()
    }

    /// PKCS#8 v1 as PEM "PRIVATE KEY" (LF line endings, like OpenSSL). Secret, wiped when
    /// dropped.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        self.pkcs8_v1()
            .to_pkcs8_pem(LineEnding::LF)
            .expect("a 32-byte seed always encodes as PKCS#8 PEM")
    }

    /// Reads PKCS#8 (v1 or v2) DER; non-Ed25519 keys are rejected with [`Error::NotEd25519`],
    /// a v2 document whose public key does not belong to its seed with [`Error::KeyMismatch`].
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self> {
        let pkcs8_err = |e: pkcs8::Error| Error::Pkcs8(e.to_string());
        let info = PrivateKeyInfoRef::try_from(der).map_err(pkcs8_err)?;
        // Checked before the Ed25519 decoder runs so that the error names the algorithm found.
        if info.algorithm.oid != ALGORITHM_OID {
            return Err(Error::NotEd25519 {
                algorithm: info.algorithm.oid.to_string(),
            });
        }
        // RFC 8410: privateKey wraps a CurvePrivateKey, an OCTET STRING holding the seed. The
        // Ed25519 decoder only says "malformed" for a wrong length; say which length it was.
        let curve_key = <&OctetStringRef>::from_der(info.private_key.as_bytes())
            .map_err(|e| Error::Pkcs8(format!("privateKey is not a CurvePrivateKey: {e}")))?;
        if curve_key.as_bytes().len() != SEED_LEN {
            return Err(Error::BadKeyLength {
                what: "Ed25519 seed in PKCS#8",
                expected: SEED_LEN,
                got: curve_key.as_bytes().len(),
            });
        }
        let parsed = KeypairBytes::try_from(info).map_err(pkcs8_err)?;
        let key = Self::from_seed(&parsed.secret_key);
        if let Some(public) = &parsed.public_key
            && public.as_ref() != key.public.as_bytes()
        {
            return Err(Error::KeyMismatch);
        }
        Ok(key)
    }

    /// Reads a PEM "PRIVATE KEY" (PKCS#8 v1 or v2).
    pub fn from_pkcs8_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        let der = Zeroizing::new(files::from_pem(PKCS8_PEM_TAG, pem)?);
        Self::from_pkcs8_der(&der)
    }

    /// metroctl's owner key file: PEM "METROPOLIS INITIAL OWNER PRIVATE KEY" holding 64 bytes.
    /// Secret, wiped when dropped.
    pub fn to_owner_key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(files::to_pem(
            OWNER_KEY_PEM_TAG,
            &self.to_keypair_bytes()[..],
        ))
    }

    /// Reads metroctl's owner key PEM.
    pub fn from_owner_key_pem(pem: impl AsRef<[u8]>) -> Result<Self> {
        let bytes = Zeroizing::new(files::from_pem(OWNER_KEY_PEM_TAG, pem)?);
        Self::from_keypair_bytes(&bytes)
    }

    /// Writes the key as PKCS#8 v1 PEM, atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::write_atomic(path, self.to_pkcs8_pem().as_bytes(), files::PRIVATE_MODE)
    }

    /// Reads a PKCS#8 PEM key file written by [`SigningKey::save`] (or OpenSSL, or Go).
    pub fn load(path: &Path) -> Result<Self> {
        let data = Zeroizing::new(files::read(path)?);
        Self::from_pkcs8_pem(&*data).map_err(|e| files::with_path(path, e))
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        SigningKey::from_seed(&self.seed)
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        // Comparing public keys is equivalent (the seed determines it) and not secret-dependent.
        self.public == other.public
    }
}

impl Eq for SigningKey {}

impl fmt::Debug for SigningKey {
    // Only the public half: private keys must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> SigningKey {
        SigningKey::generate().expect("generate")
    }

    #[test]
    fn sign_verify() {
        let k = key();
        let sig = k.sign(b"hello");
        k.public_key().verify(b"hello", &sig).expect("verify");
        assert!(matches!(
            k.public_key().verify(b"hellp", &sig),
            Err(Error::SignatureInvalid(_))
        ));
        assert!(matches!(
            k.public_key().verify(b"hello", &sig[..63]),
            Err(Error::BadKeyLength { got: 63, .. })
        ));
    }

    #[test]
    fn rfc8032_test_vector() {
        // RFC 8032 §7.1 TEST 1.
        let seed = hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .expect("hex");
        let k = SigningKey::from_seed_slice(&seed).expect("seed");
        assert_eq!(
            k.public_key().to_string(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex::encode(k.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn public_key_hex_round_trip() {
        let pk = key().public_key();
        assert_eq!(pk.to_string().parse::<PublicKey>().expect("parse"), pk);
        assert!(matches!(
            "abcd".parse::<PublicKey>(),
            Err(Error::BadKeyLength { got: 2, .. })
        ));
        assert!(matches!(
            "zz".parse::<PublicKey>(),
            Err(Error::BadKeyLength { .. })
        ));
    }

    #[test]
    fn public_key_from_slice_checks_length() {
        assert!(PublicKey::from_slice(&[0u8; 32]).is_ok());
        assert!(matches!(
            PublicKey::from_slice(&[0u8; 31]),
            Err(Error::BadKeyLength {
                expected: 32,
                got: 31,
                ..
            })
        ));
        assert!(matches!(
            SigningKey::from_seed_slice(&[0u8; 33]),
            Err(Error::BadKeyLength {
                expected: 32,
                got: 33,
                ..
            })
        ));
    }

    #[test]
    fn pkcs8_v1_exact_bytes_and_round_trip() {
        let k = key();
        let der = k.to_pkcs8_der();
        assert_eq!(der.len(), 48);
        assert_eq!(hex::encode(&der[..16]), "302e020100300506032b657004220420");
        assert_eq!(&der[16..], k.seed());
        let back = SigningKey::from_pkcs8_der(&der).expect("parse v1");
        assert_eq!(back.seed(), k.seed());
        let pem = k.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(
            SigningKey::from_pkcs8_pem(&pem).expect("pem").public_key(),
            k.public_key()
        );
        // ring accepts what we write, too.
        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).expect("ring reads v1");
    }

    #[test]
    fn pkcs8_v2_from_ring_and_rcgen_is_read() {
        let rng = ring::rand::SystemRandom::new();
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("ring v2");
        let pair = signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("ring");
        let k = SigningKey::from_pkcs8_der(doc.as_ref()).expect("parse v2");
        assert_eq!(
            k.public_key().as_bytes()[..],
            pair.public_key().as_ref()[..]
        );

        let rc = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("rcgen");
        let k = SigningKey::from_pkcs8_pem(rc.serialize_pem()).expect("parse rcgen");
        assert_eq!(k.public_key().as_bytes()[..], rc.public_key_raw()[..]);
    }

    #[test]
    fn pkcs8_v2_with_wrong_public_key_is_rejected() {
        let rng = ring::rand::SystemRandom::new();
        let mut doc = signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("ring v2")
            .as_ref()
            .to_vec();
        let last = doc.len() - 1;
        doc[last] ^= 1;
        assert!(matches!(
            SigningKey::from_pkcs8_der(&doc),
            Err(Error::KeyMismatch)
        ));
    }

    #[test]
    fn non_ed25519_pkcs8_is_rejected() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ec");
        match SigningKey::from_pkcs8_pem(ec.serialize_pem()) {
            Err(Error::NotEd25519 { algorithm }) => assert_eq!(algorithm, "1.2.840.10045.2.1"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_and_garbage_keys_are_rejected() {
        let der = key().to_pkcs8_der();
        for n in 0..der.len() {
            assert!(
                SigningKey::from_pkcs8_der(&der[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            SigningKey::from_pkcs8_der(&trailing),
            Err(Error::Pkcs8(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem("not pem at all"),
            Err(Error::Pem(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n"
            ),
            Err(Error::Pem(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem(files::to_pem("PRIVATE KEY", b"\x30\x03\x02\x01")),
            Err(Error::Pkcs8(_))
        ));
        assert!(matches!(
            SigningKey::from_pkcs8_pem(files::to_pem("CERTIFICATE", &der)),
            Err(Error::PemType { .. })
        ));
        // A wrong-length seed inside otherwise valid PKCS#8.
        let mut short = vec![
            0x30, 0x2d, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x21,
            0x04, 0x1f,
        ];
        short.extend_from_slice(&[7u8; 31]);
        assert!(matches!(
            SigningKey::from_pkcs8_der(&short),
            Err(Error::BadKeyLength {
                expected: 32,
                got: 31,
                ..
            })
        ));
    }

    #[test]
    fn keypair_bytes_round_trip_and_mismatch() {
        let k = key();
        let b = k.to_keypair_bytes();
        assert_eq!(&b[..32], k.seed());
        assert_eq!(&b[32..], k.public_key().as_bytes());
        assert_eq!(
            SigningKey::from_keypair_bytes(&b[..])
                .expect("round trip")
                .public_key(),
            k.public_key()
        );
        let mut bad = b.clone();
        bad[40] ^= 0xff;
        assert!(matches!(
            SigningKey::from_keypair_bytes(&bad[..]),
            Err(Error::KeyMismatch)
        ));
        assert!(matches!(
            SigningKey::from_keypair_bytes(&b[..63]),
            Err(Error::BadKeyLength {
                expected: 64,
                got: 63,
                ..
            })
        ));
    }

    #[test]
    fn owner_key_pem_round_trip() {
        let k = key();
        let pem = k.to_owner_key_pem();
        assert!(pem.starts_with("-----BEGIN METROPOLIS INITIAL OWNER PRIVATE KEY-----\n"));
        assert_eq!(
            SigningKey::from_owner_key_pem(&pem)
                .expect("parse")
                .public_key(),
            k.public_key()
        );
        assert!(matches!(
            SigningKey::from_owner_key_pem(k.to_pkcs8_pem()),
            Err(Error::PemType { .. })
        ));
        assert!(matches!(
            SigningKey::from_owner_key_pem(files::to_pem(OWNER_KEY_PEM_TAG, &[1u8; 32])),
            Err(Error::BadKeyLength { .. })
        ));
    }

    #[test]
    fn debug_does_not_leak_secret() {
        let k = key();
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&k.public_key().to_string()));
        assert!(!dbg.contains(&hex::encode(k.seed())));
        assert!(!dbg.contains(&format!("{:?}", k.seed())));
    }

    #[test]
    fn save_load_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.pem");
        let k = key();
        k.save(&p).expect("save");
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SigningKey::load(&p).expect("load"), k);
        assert!(matches!(
            SigningKey::load(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn openssl_generated_key_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ossl.pem");
        let Ok(out) = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&p)
            .output()
        else {
            eprintln!("openssl not on PATH; skipping");
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let k = SigningKey::load(&p).expect("load OpenSSL key");
        // Writing it back gives exactly what OpenSSL wrote (both are PKCS#8 v1).
        let written = std::fs::read_to_string(&p).expect("read");
        assert_eq!(*k.to_pkcs8_pem(), written);
    }

    #[test]
    fn openssl_accepts_written_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.pem");
        let k = key();
        k.save(&p).expect("save");
        // OpenSSL derives the public key from our seed: it must be ours.
        let out = match std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&p)
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                eprintln!("openssl not on PATH; skipping");
                return;
            }
        };
        assert!(
            out.status.success(),
            "openssl rejected the key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SubjectPublicKeyInfo DER ends with the 32 raw public key bytes.
        assert!(out.stdout.ends_with(k.public_key().as_bytes()));
    }

    #[test]
    fn pkcs8_with_algorithm_parameters_is_rejected() {
        // RFC 8410: the Ed25519 AlgorithmIdentifier has no parameters; here it carries NULL.
        let mut der = vec![
            0x30, 0x30, 0x02, 0x01, 0x00, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00,
            0x04, 0x22, 0x04, 0x20,
        ];
        der.extend_from_slice(&[7u8; 32]);
        assert!(matches!(
            SigningKey::from_pkcs8_der(&der),
            Err(Error::Pkcs8(_))
        ));
        // The same document without the parameters is a valid key.
        let mut plain = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        plain.extend_from_slice(&[7u8; 32]);
        assert_eq!(
            SigningKey::from_pkcs8_der(&plain).expect("v1").seed(),
            &[7u8; 32]
        );
    }
}
