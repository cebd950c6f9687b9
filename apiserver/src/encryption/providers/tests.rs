//! Fixed vectors computed independently of this code: AES-CBC/GCM with Python's
//! `cryptography` 48, secretbox with PyNaCl (libsodium), for the value, keys, IVs and nonces
//! below. They pin the byte layouts upstream writes (IV/nonce first, PKCS#7, the GCM tag
//! last, the secretbox tag first, the etcd key as GCM's additional data).

use super::*;

const DATA: &[u8] = br#"{"kind":"Secret","data":{"a":"Yg=="}}"#;
const AAD: &[u8] = b"/registry/secrets/default/s1";

fn key(n: u8) -> Vec<u8> {
    (0..n).collect()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const CBC: [(u8, &str); 3] = [
    (16, "6465666768696a6b6c6d6e6f7071727384dae64f6f36421d0828c8a3d20c4f27ed4df06f3ce8a36e6fa9e92b638b995421a4f585739cdd8a49af3bfede574935"),
    (24, "6465666768696a6b6c6d6e6f7071727352efc26e767f4d8852369f65ebadc68cf203fc2ab31c5103295d3af5a0193a6d3aef4d5d99c984c61e70ded8e77f8784"),
    (32, "6465666768696a6b6c6d6e6f7071727344283a8a80a45cba29966b60a5c5bdab122d1037b2fc95aaae7ef7ce1f75fe2ae6dac6b4ed2d1341875be209412a8920"),
];

const GCM: [(u8, &str); 3] = [
    (16, "c8c9cacbcccdcecfd0d1d2d34d0affd760570913fcc4cd21b30417845c329968a54e3f29af9526ea2cdda8a2c307b460e90bbbd1a933e5f715fd874d51fbef91a1"),
    (24, "c8c9cacbcccdcecfd0d1d2d3c2a47741f872728e3e7f739437b6f6941bda069937203583e80d4a34fc780c8103a085a2392ab316d54a577c7ac69df99e2f8e9980"),
    (32, "c8c9cacbcccdcecfd0d1d2d36a5a0ab2e8a8d91a566f7add6c639f36cca588c9700a8a1e968b5ac3e0b3f28ef1b108dbeff5f6ab9408486c76c33c780d671fbc1b"),
];

const SECRETBOX: &str = "32333435363738393a3b3c3d3e3f40414243444546474849096acc310d98736fcd79fa1c9a2883ed55263a9797afd05c400464c9d2fdb65408242959fb835801e0bbbdd6d12cb644135522096b";

fn one_key(cipher: Cipher, secret: Vec<u8>) -> Transformer {
    Transformer {
        providers: vec![Provider::Keyed {
            cipher,
            keys: vec![Key {
                name: "key1".into(),
                secret,
            }],
        }],
    }
}

fn stored(cipher: Cipher, body: &[u8]) -> Vec<u8> {
    let mut v = format!("k8s:enc:{}:v1:key1:", cipher.name()).into_bytes();
    v.extend_from_slice(body);
    v
}

#[test]
fn aescbc_matches_the_independent_vectors_both_ways() {
    let iv: Vec<u8> = (100..116).collect();
    for (n, want) in CBC {
        assert_eq!(cbc_seal(&key(n), &iv, DATA), hex(want), "AES-{} CBC", n * 8);
        let t = one_key(Cipher::AesCbc, key(n));
        // no authenticated data: any key path decrypts
        let value = stored(Cipher::AesCbc, &hex(want));
        let plain = t.read_stored(&value, b"/elsewhere").expect("decrypts");
        assert_eq!(&*plain, DATA);
    }
}

#[test]
fn aesgcm_matches_the_independent_vectors_and_binds_the_etcd_key() {
    let nonce: Vec<u8> = (200..212).collect();
    for (n, want) in GCM {
        assert_eq!(
            gcm_seal(&key(n), &nonce, DATA, AAD).expect("seals"),
            hex(want),
            "AES-{} GCM",
            n * 8
        );
        let t = one_key(Cipher::AesGcm, key(n));
        let value = stored(Cipher::AesGcm, &hex(want));
        assert_eq!(&*t.read_stored(&value, AAD).expect("decrypts"), DATA);
        assert_eq!(
            t.read_stored(&value, b"/registry/secrets/default/s2")
                .unwrap_err(),
            "cipher: message authentication failed",
            "a value moved to another key must not decrypt"
        );
    }
}

#[test]
fn secretbox_matches_the_independent_vector() {
    let nonce: Vec<u8> = (50..74).collect();
    assert_eq!(
        secretbox_seal(&key(32), &nonce, DATA).expect("seals"),
        hex(SECRETBOX)
    );
    let t = one_key(Cipher::Secretbox, key(32));
    let value = stored(Cipher::Secretbox, &hex(SECRETBOX));
    let plain = t.read_stored(&value, AAD).expect("decrypts");
    assert_eq!(&*plain, DATA);
    let mut tampered = stored(Cipher::Secretbox, &hex(SECRETBOX));
    *tampered.last_mut().unwrap() ^= 1;
    assert!(t.read_stored(&tampered, AAD).is_err());
}

#[test]
fn writes_use_the_first_provider_and_its_first_key_with_fresh_randomness() {
    for cipher in [Cipher::AesCbc, Cipher::AesGcm, Cipher::Secretbox] {
        let t = one_key(cipher, key(32));
        let a = t.to_storage(DATA, AAD).expect("encrypts");
        let b = t.to_storage(DATA, AAD).expect("encrypts");
        let prefix = format!("k8s:enc:{}:v1:key1:", cipher.name());
        assert!(a.starts_with(prefix.as_bytes()));
        assert_ne!(a, b, "{}: a fresh IV/nonce per write", cipher.name());
        assert_eq!(&*t.read_stored(&a, AAD).expect("round trip"), DATA);
    }
}

#[test]
fn reads_follow_upstreams_prefix_rules() {
    let cbc_key1 = stored(Cipher::AesCbc, &hex(CBC[2].1));
    let identity_then_cbc2 = Transformer {
        providers: vec![
            Provider::Identity,
            Provider::Keyed {
                cipher: Cipher::AesCbc,
                keys: vec![Key {
                    name: "key2".into(),
                    secret: key(32),
                }],
            },
        ],
    };
    // plain data reads through identity
    assert_eq!(&*identity_then_cbc2.read_stored(DATA, AAD).unwrap(), DATA);
    // the aescbc prefix matches but key1 is gone
    assert_eq!(
        identity_then_cbc2.read_stored(&cbc_key1, AAD).unwrap_err(),
        "no matching key was found for the provided AES transformer"
    );
    // a provider that is not configured at all: identity's refusal is the answer
    let gcm_data = stored(Cipher::AesGcm, &hex(GCM[2].1));
    assert_eq!(
        identity_then_cbc2.read_stored(&gcm_data, AAD).unwrap_err(),
        "identity transformer tried to read encrypted data"
    );
    // without identity, plain data has no matching prefix
    assert_eq!(
        one_key(Cipher::AesCbc, key(32))
            .read_stored(DATA, AAD)
            .unwrap_err(),
        "no matching prefix found"
    );
}

#[test]
fn only_the_first_provider_and_key_write_like_now() {
    let key2_then_key1 = Transformer {
        providers: vec![
            Provider::Keyed {
                cipher: Cipher::AesCbc,
                keys: vec![
                    Key {
                        name: "key2".into(),
                        secret: key(32),
                    },
                    Key {
                        name: "key1".into(),
                        secret: key(32),
                    },
                ],
            },
            Provider::Identity,
        ],
    };
    let fresh = key2_then_key1.to_storage(DATA, AAD).unwrap();
    assert!(key2_then_key1.writes_like(&fresh));
    assert!(!key2_then_key1.writes_like(&stored(Cipher::AesCbc, &hex(CBC[2].1))));
    assert!(!key2_then_key1.writes_like(DATA), "plain data is stale");
}
