//! Known-answer tests for the primitives the protocol is built on, against their published
//! test vectors, through the same crate APIs the protocol calls.
//!
//! | primitive | used for | vectors |
//! | --- | --- | --- |
//! | X25519 | handshake key agreement | RFC 7748 §5.2 (both single vectors, 1 and 1,000 iterations) and §6.1 |
//! | Ed25519 | user, device and relay signatures | RFC 8032 §7.1 TEST 1, 2, 3 |
//! | ChaCha20-Poly1305 | the encrypted channel | RFC 8439 §2.8.2 |
//! | XChaCha20-Poly1305 | end-to-end payload sealing | draft-irtf-cfrg-xchacha-03 §A.3.1 |
//! | HKDF-SHA256 | the handshake key schedule | RFC 5869 Appendix A, test cases 1–3 |
//!
//! Every hex string below is copied from the document named next to it; none was computed
//! here. If one of these tests fails, the dependency (or its configuration) changed
//! behaviour: do not "fix" the vector.

// Test code: a panic is how a failed check reports itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ferry_protocol::{DeviceKey, UserKey};
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey, X25519_BASEPOINT_BYTES, x25519};

/// Decodes hex into a fixed-size array (whitespace allowed, for vectors split over lines).
fn bytes<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let digits: String = text.split_whitespace().collect();
    hex::decode_to_slice(&digits, &mut out).expect("vector is valid hex of the stated length");
    out
}

/// Decodes hex of any length (whitespace allowed).
fn vec(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    hex::decode(digits).expect("vector is valid hex")
}

mod x25519_rfc7748 {
    use super::*;
    use rand_core::{CryptoRng, RngCore};

    /// RFC 7748 §5.2, the two single-shot vectors: (scalar, input u, output u).
    /// The second input u has its top bit set, which X25519 must ignore.
    const SINGLE: [(&str, &str, &str); 2] = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];

    #[test]
    fn single_vectors() {
        for (scalar, u, expected) in SINGLE {
            assert_eq!(
                x25519(bytes(scalar), bytes(u)),
                bytes::<32>(expected),
                "scalar {scalar}"
            );
        }
    }

    /// RFC 7748 §5.2, the iterated test: k = u = 9; repeatedly `k, u = X25519(k, u), k`.
    /// (The 1,000,000-iteration value is left out: it takes minutes.)
    #[test]
    fn iterated_1_and_1000() {
        let mut k = X25519_BASEPOINT_BYTES;
        let mut u = X25519_BASEPOINT_BYTES;
        for i in 1..=1000 {
            let next = x25519(k, u);
            u = k;
            k = next;
            match i {
                1 => assert_eq!(
                    k,
                    bytes::<32>("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
                ),
                1000 => assert_eq!(
                    k,
                    bytes::<32>("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
                ),
                _ => {}
            }
        }
    }

    const ALICE_SECRET: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
    const ALICE_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const BOB_SECRET: &str = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
    const BOB_PUBLIC: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    const SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

    /// An "RNG" that hands out fixed bytes, so that the RFC's secret keys go through
    /// `EphemeralSecret`, exactly as the handshake makes its keys.
    struct Fixed([u8; 32]);

    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            unimplemented!("EphemeralSecret only calls fill_bytes")
        }
        fn next_u64(&mut self) -> u64 {
            unimplemented!("EphemeralSecret only calls fill_bytes")
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.copy_from_slice(&self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }

    impl CryptoRng for Fixed {}

    /// RFC 7748 §6.1: both public keys and the shared secret, computed in both directions
    /// with the key types the handshake uses.
    #[test]
    fn diffie_hellman_example() {
        assert_eq!(
            x25519(bytes(ALICE_SECRET), X25519_BASEPOINT_BYTES),
            bytes::<32>(ALICE_PUBLIC)
        );
        assert_eq!(
            x25519(bytes(BOB_SECRET), X25519_BASEPOINT_BYTES),
            bytes::<32>(BOB_PUBLIC)
        );

        let alice = EphemeralSecret::random_from_rng(Fixed(bytes(ALICE_SECRET)));
        let bob = EphemeralSecret::random_from_rng(Fixed(bytes(BOB_SECRET)));
        assert_eq!(
            PublicKey::from(&alice).to_bytes(),
            bytes::<32>(ALICE_PUBLIC)
        );
        assert_eq!(PublicKey::from(&bob).to_bytes(), bytes::<32>(BOB_PUBLIC));

        let alice_shared = alice.diffie_hellman(&PublicKey::from(bytes::<32>(BOB_PUBLIC)));
        let bob_shared = bob.diffie_hellman(&PublicKey::from(bytes::<32>(ALICE_PUBLIC)));
        assert!(alice_shared.was_contributory());
        assert_eq!(alice_shared.to_bytes(), bytes::<32>(SHARED));
        assert_eq!(bob_shared.to_bytes(), bytes::<32>(SHARED));
    }
}

mod ed25519_rfc8032 {
    use super::*;

    struct Vector {
        secret: &'static str,
        public: &'static str,
        message: &'static str,
        signature: &'static str,
    }

    /// RFC 8032 §7.1, TEST 1 (empty message), TEST 2 (one byte), TEST 3 (two bytes).
    const VECTORS: [Vector; 3] = [
        Vector {
            secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            public: "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            message: "",
            signature: "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        },
        Vector {
            secret: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            public: "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            message: "72",
            signature: "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        },
        Vector {
            secret: "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            public: "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            message: "af82",
            signature: "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        },
    ];

    #[test]
    fn test_1_2_3() {
        for (n, v) in VECTORS.iter().enumerate() {
            let test = n + 1;
            let key = SigningKey::from_bytes(&bytes(v.secret));
            let message = vec(v.message);
            let expected = Signature::from_bytes(&bytes(v.signature));

            assert_eq!(
                key.verifying_key().to_bytes(),
                bytes::<32>(v.public),
                "TEST {test}: public key"
            );
            assert_eq!(key.sign(&message), expected, "TEST {test}: signature");

            // The protocol verifies strictly (no small-order keys, no malleable signatures).
            let public = VerifyingKey::from_bytes(&bytes(v.public)).unwrap();
            public.verify_strict(&message, &expected).unwrap();
            let mut tampered = message.clone();
            tampered.push(0);
            assert!(
                public.verify_strict(&tampered, &expected).is_err(),
                "TEST {test}: tampered"
            );
        }
    }

    /// The protocol's own key types derive the same public keys from the same secrets.
    #[test]
    fn protocol_key_types_agree() {
        for v in &VECTORS {
            assert_eq!(
                UserKey::from_secret_bytes(&bytes(v.secret)).id().0,
                bytes::<32>(v.public)
            );
            assert_eq!(
                DeviceKey::from_secret_bytes(&bytes(v.secret)).id().0,
                bytes::<32>(v.public)
            );
        }
    }
}

mod chacha20_poly1305 {
    use super::*;

    /// The plaintext shared by RFC 8439 §2.8.2 and draft-irtf-cfrg-xchacha-03 §A.3.1.
    const PLAINTEXT: &[u8] =
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                               tip for the future, sunscreen would be it.";
    const KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const AAD: &str = "50515253c0c1c2c3c4c5c6c7";

    /// RFC 8439 §2.8.2: nonce = 32-bit fixed-common part `07000000` ‖ IV `4041424344454647`.
    #[test]
    fn chacha20_poly1305_rfc8439() {
        let nonce: [u8; 12] = bytes("07000000 4041424344454647");
        let ciphertext = vec(
            "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b 6116",
        );
        let tag = vec("1ae10b594f09e26a7e902ecbd0600691");
        let cipher = ChaCha20Poly1305::new(&bytes::<32>(KEY).into());
        let aad = vec(AAD);

        let sealed = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: PLAINTEXT,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(sealed, [ciphertext, tag].concat());

        // The channel opens in place; do the same.
        let mut buffer = sealed.clone();
        cipher
            .decrypt_in_place(&nonce.into(), &aad, &mut buffer)
            .unwrap();
        assert_eq!(buffer, PLAINTEXT);

        let mut forged = sealed;
        *forged.last_mut().unwrap() ^= 1;
        assert!(
            cipher
                .decrypt_in_place(&nonce.into(), &aad, &mut forged)
                .is_err()
        );
    }

    /// draft-irtf-cfrg-xchacha-03 §A.3.1 (AEAD_XCHACHA20_POLY1305), the construction
    /// `seal::seal` uses for event payloads.
    #[test]
    fn xchacha20_poly1305_draft_irtf_cfrg_xchacha_03() {
        let nonce: [u8; 24] = bytes("404142434445464748494a4b4c4d4e4f5051525354555657");
        let ciphertext = vec(
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9
             21f9664c97637da9768812f615c68b13b52e",
        );
        let tag = vec("c0875924c1c7987947deafd8780acf49");
        let cipher = XChaCha20Poly1305::new(&bytes::<32>(KEY).into());
        let aad = vec(AAD);

        let sealed = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: PLAINTEXT,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(sealed, [ciphertext, tag].concat());
        let opened = cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(opened, PLAINTEXT);
    }
}

mod hkdf_rfc5869 {
    use super::*;

    struct Case {
        ikm: &'static str,
        salt: &'static str,
        info: &'static str,
        prk: &'static str,
        okm: &'static str,
    }

    /// RFC 5869 Appendix A.1–A.3 (the SHA-256 cases). Case 3 has a zero-length salt and info.
    const CASES: [Case; 3] = [
        Case {
            ikm: "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            salt: "000102030405060708090a0b0c",
            info: "f0f1f2f3f4f5f6f7f8f9",
            prk: "077709362c2e32df0ddc3f0dc47bba63 90b6c73bb50f9c3122ec844ad7c2b3e5",
            okm: "3cb25f25faacd57a90434f64d0362f2a 2d2d0a90cf1a5a4c5db02d56ecc4c5bf
                  34007208d5b887185865",
        },
        Case {
            ikm: "000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f
                  202122232425262728292a2b2c2d2e2f 303132333435363738393a3b3c3d3e3f
                  404142434445464748494a4b4c4d4e4f",
            salt: "606162636465666768696a6b6c6d6e6f 707172737475767778797a7b7c7d7e7f
                   808182838485868788898a8b8c8d8e8f 909192939495969798999a9b9c9d9e9f
                   a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            info: "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf c0c1c2c3c4c5c6c7c8c9cacbcccdcecf
                   d0d1d2d3d4d5d6d7d8d9dadbdcdddedf e0e1e2e3e4e5e6e7e8e9eaebecedeeef
                   f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            prk: "06a6b88c5853361a06104c9ceb35b45c ef760014904671014a193f40c15fc244",
            okm: "b11e398dc80327a1c8e7f78c596a4934 4f012eda2d4efad8a050cc4c19afa97c
                  59045a99cac7827271cb41c65e590e09 da3275600c2f09b8367793a9aca3db71
                  cc30c58179ec3e87c14c01d5c1f3434f 1d87",
        },
        Case {
            ikm: "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
            salt: "",
            info: "",
            prk: "19ef24a32c717b167f33a91d6f648bdf 96596776afdb6377ac434c1c293ccb04",
            okm: "8da4e775a563c18f715f802a063c5a31 b8a11f5c5ee1879ec3454e5f3c738d2d
                  9d201395faa4b61a96c8",
        },
    ];

    #[test]
    fn test_cases_1_2_3() {
        for (n, case) in CASES.iter().enumerate() {
            let test = n + 1;
            let (salt, ikm, info, okm) =
                (vec(case.salt), vec(case.ikm), vec(case.info), vec(case.okm));

            let (prk, hkdf) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
            assert_eq!(prk.as_slice(), vec(case.prk), "case {test}: PRK");
            let mut out = vec![0u8; okm.len()];
            hkdf.expand(&info, &mut out).unwrap();
            assert_eq!(out, okm, "case {test}: OKM");

            // `keys::derive` goes through `Hkdf::new`, which must agree with extract + expand.
            let mut again = vec![0u8; okm.len()];
            Hkdf::<Sha256>::new(Some(&salt), &ikm)
                .expand(&info, &mut again)
                .unwrap();
            assert_eq!(again, okm, "case {test}: Hkdf::new");
        }
    }
}
