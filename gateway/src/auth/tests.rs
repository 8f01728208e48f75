use super::*;
use crate::tls::devca::{DevCa, LeafKind};
use crate::tls::identity::parse_certificate;

struct Idp {
    key_pem: String,
    public_pem: String,
}

fn idp() -> Idp {
    let key = rcgen::KeyPair::generate().unwrap();
    Idp {
        key_pem: key.serialize_pem(),
        public_pem: key.public_key_pem(),
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(exp_offset: i64) -> DevTokenClaims {
    DevTokenClaims {
        iss: "https://idp.test".into(),
        aud: "gateway".into(),
        sub: "user-1".into(),
        role: "R8000".into(),
        org: "RBD".into(),
        purpose_of_use: "TREAT".into(),
        iat: now(),
        nbf: now() - 5,
        exp: now() + exp_offset,
    }
}

fn verifier(i: &Idp) -> ClinicianVerifier {
    ClinicianVerifier::from_pem("https://idp.test", "gateway", &i.public_pem, "test").unwrap()
}

#[test]
fn a_good_token_gives_the_user() {
    let i = idp();
    let t = mint_dev_token(&claims(300), &i.key_pem, None).unwrap();
    let user = verifier(&i).verify(&t).unwrap();
    assert_eq!(user.role, "R8000");
    assert_eq!(user.organisation, "RBD");
    assert_eq!(user.purpose_of_use.as_deref(), Some("TREAT"));
}

#[test]
fn expired_wrong_audience_wrong_issuer_and_future_tokens_fail() {
    let i = idp();
    let v = verifier(&i);
    assert_eq!(
        v.verify(&mint_dev_token(&claims(-120), &i.key_pem, None).unwrap()),
        Err(AuthError::Expired)
    );
    let mut c = claims(300);
    c.aud = "other".into();
    assert_eq!(
        v.verify(&mint_dev_token(&c, &i.key_pem, None).unwrap()),
        Err(AuthError::WrongAudience)
    );
    let mut c = claims(300);
    c.iss = "https://evil".into();
    assert_eq!(
        v.verify(&mint_dev_token(&c, &i.key_pem, None).unwrap()),
        Err(AuthError::WrongIssuer)
    );
    let mut c = claims(3600);
    c.nbf = now() + 600;
    assert_eq!(
        v.verify(&mint_dev_token(&c, &i.key_pem, None).unwrap()),
        Err(AuthError::NotYetValid)
    );
}

#[test]
fn another_key_does_not_verify() {
    let (good, evil) = (idp(), idp());
    let t = mint_dev_token(&claims(300), &evil.key_pem, None).unwrap();
    assert_eq!(verifier(&good).verify(&t), Err(AuthError::BadSignature));
}

fn b64(bytes: &[u8]) -> String {
    use base64_url as b;
    b::encode(bytes)
}

mod base64_url {
    pub fn encode(input: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[test]
fn alg_none_is_refused() {
    let i = idp();
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(serde_json::to_string(&claims(300)).unwrap().as_bytes());
    let token = format!("{header}.{body}.");
    assert_eq!(verifier(&i).verify(&token), Err(AuthError::Algorithm));
}

#[test]
fn hmac_keyed_with_the_public_key_is_refused() {
    let i = idp();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(300),
        &EncodingKey::from_secret(i.public_pem.as_bytes()),
    )
    .unwrap();
    assert_eq!(verifier(&i).verify(&forged), Err(AuthError::Algorithm));
}

#[test]
fn garbage_is_malformed() {
    let i = idp();
    assert_eq!(verifier(&i).verify("not.a.jwt"), Err(AuthError::Malformed));
    assert_eq!(verifier(&i).verify(""), Err(AuthError::Malformed));
}

#[test]
fn missing_role_is_refused() {
    #[derive(serde::Serialize)]
    struct Thin {
        iss: &'static str,
        aud: &'static str,
        sub: &'static str,
        exp: i64,
    }
    let i = idp();
    let t = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &Thin {
            iss: "https://idp.test",
            aud: "gateway",
            sub: "u",
            exp: now() + 300,
        },
        &EncodingKey::from_ec_pem(i.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        verifier(&i).verify(&t),
        Err(AuthError::MissingClaim("role".into()))
    );
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let i = idp();
    let key = rcgen::KeyPair::from_pem(&i.key_pem).unwrap();
    let point = key.public_key_raw();
    let (x, y) = point[1..].split_at(32);
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig", "alg": "ES256", "x": b64(x), "y": b64(y)}]});
    let v = ClinicianVerifier::from_jwks("https://idp.test", "gateway", &jwks.to_string(), "jwks")
        .unwrap();
    let t = mint_dev_token(&claims(300), &i.key_pem, Some("k1")).unwrap();
    assert!(v.verify(&t).is_ok());
    let t = mint_dev_token(&claims(300), &i.key_pem, Some("other")).unwrap();
    assert_eq!(v.verify(&t), Err(AuthError::NoKey));
}

fn check<'a>(peer_identity: &'a str, own_identity: &'a str) -> ForwardedCheck<'a> {
    ForwardedCheck {
        peer_identity,
        own_identity,
        now: now(),
        max_lifetime_s: FORWARD_TTL_SECONDS,
    }
}

#[test]
fn forwarded_context_binds_to_the_certificate() {
    let ca = DevCa::new("ca").unwrap();
    let dorset = ca.issue("dorset", LeafKind::Client, &[], 30).unwrap();
    let wilts = ca.issue("wiltshire", LeafKind::Client, &[], 30).unwrap();
    let dorset_id = parse_certificate(&dorset.cert_der).unwrap();
    let wilts_id = parse_certificate(&wilts.cert_der).unwrap();
    let signer = ForwardSigner::new(
        "urn:gateway:region:dorset",
        &dorset.key_pem,
        &dorset_id.public_key,
    )
    .unwrap();
    let user = UserContext {
        user_id: "u".into(),
        role: "R8000".into(),
        organisation: "RBD".into(),
        purpose_of_use: Some("TREAT".into()),
        break_glass: Some("patient collapsed".into()),
        scope: None,
        patient: None,
    };
    let t = signer
        .sign(&user, "urn:gateway:region:hampshire", "req-1", now())
        .unwrap();

    let ok = verify_forwarded(
        &t,
        &dorset_id,
        check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
    )
    .unwrap();
    assert_eq!(ok.user, user);
    assert_eq!(ok.request_id, "req-1");
    // Presented over wiltshire's certificate: the signature is not wiltshire's.
    assert_eq!(
        verify_forwarded(
            &t,
            &wilts_id,
            check(
                "urn:gateway:region:wiltshire",
                "urn:gateway:region:hampshire"
            ),
        ),
        Err(AuthError::BadSignature)
    );
    // Meant for another region.
    assert_eq!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:wiltshire"),
        ),
        Err(AuthError::WrongAudience)
    );
    // Signed by dorset's key but claiming to be another region.
    let liar = ForwardSigner::new(
        "urn:gateway:region:wiltshire",
        &dorset.key_pem,
        &dorset_id.public_key,
    )
    .unwrap();
    let t = liar
        .sign(&user, "urn:gateway:region:hampshire", "r", now())
        .unwrap();
    assert!(matches!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
        ),
        Err(AuthError::RegionMismatch { .. })
    ));
    // Expired.
    let t = signer
        .sign(&user, "urn:gateway:region:hampshire", "r", now() - 600)
        .unwrap();
    assert_eq!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
        ),
        Err(AuthError::Expired)
    );
    // Issued in the future (beyond the leeway), with the usual lifetime: refused, so that a
    // holder of the key cannot mint contexts that stay good for a year.
    let t = signer
        .sign(
            &user,
            "urn:gateway:region:hampshire",
            "r",
            now() + 365 * 86_400,
        )
        .unwrap();
    assert_eq!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
        ),
        Err(AuthError::IssuedInFuture)
    );
    // Within the leeway it is clock skew, and accepted.
    let t = signer
        .sign(&user, "urn:gateway:region:hampshire", "r", now() + 20)
        .unwrap();
    assert!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
        )
        .is_ok()
    );
    // A lifetime longer than the one configured: refused, though it has not expired.
    #[derive(serde::Serialize)]
    struct Long<'a> {
        iss: &'a str,
        aud: &'a str,
        sub: &'a str,
        role: &'a str,
        org: &'a str,
        iat: i64,
        exp: i64,
        jti: &'a str,
    }
    let t = signer
        .sign_claims(&Long {
            iss: "urn:gateway:region:dorset",
            aud: "urn:gateway:region:hampshire",
            sub: "u",
            role: "R8000",
            org: "RBD",
            iat: now(),
            exp: now() + 3600,
            jti: "r",
        })
        .unwrap();
    assert_eq!(
        verify_forwarded(
            &t,
            &dorset_id,
            check("urn:gateway:region:dorset", "urn:gateway:region:hampshire"),
        ),
        Err(AuthError::TooLong)
    );
}

#[test]
fn a_remembered_token_is_served_only_until_it_expires() {
    let i = idp();
    let v = verifier(&i);
    let t = mint_dev_token(&claims(300), &i.key_pem, None).unwrap();
    let first = v.verify(&t).unwrap();
    assert_eq!(v.verify(&t).unwrap(), first, "the same user from the memo");
    // The memo says it expired long ago: it is checked again, and refused.
    let expired = mint_dev_token(&claims(-120), &i.key_pem, None).unwrap();
    let digest: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&expired)).into();
    v.verified.insert(digest, (first.clone(), now() - 120));
    assert_eq!(v.verify(&expired), Err(AuthError::Expired));
    // A token one character off is never taken for the remembered one.
    let forged = format!("{}x", &t[..t.len() - 1]);
    assert!(v.verify(&forged).is_err());
}

#[test]
fn claims_are_read_by_the_regions_own_names_with_scopes_and_patient() {
    let claims = |v: serde_json::Value| v.as_object().unwrap().clone();
    let rules = ClaimRules {
        names: ClaimNames {
            role: "nhs_role".into(),
            organisation: "ods".into(),
            purpose_of_use: "pou".into(),
            ..ClaimNames::default()
        },
        default_scopes: Some("user/*.rs".into()),
    };
    let u = rules
        .user(&claims(serde_json::json!({
            "sub": "u-1", "nhs_role": "R8000", "ods": "RBD", "pou": "TREAT",
            "scope": "openid user/Observation.rs", "patient": "Patient/9000000009",
        })))
        .unwrap();
    assert_eq!((u.role.as_str(), u.organisation.as_str()), ("R8000", "RBD"));
    assert_eq!(u.purpose_of_use.as_deref(), Some("TREAT"));
    assert_eq!(u.scope.as_deref(), Some("openid user/Observation.rs"));
    assert_eq!(u.patient.as_deref(), Some("9000000009"));
    assert!(u.may_ask_about("9000000009") && !u.may_ask_about("9434765919"));
    assert!(u.may("Observation", scopes::Interaction::Search));
    assert!(!u.may("Condition", scopes::Interaction::Search));
    // An array of scopes (`scp`), and the configured default for a token without any.
    let u = rules
        .user(&claims(serde_json::json!({"sub": "u", "nhs_role": "R8000", "ods": "RBD", "scp": ["user/Condition.rs"]})))
        .unwrap();
    assert_eq!(u.scope.as_deref(), Some("user/Condition.rs"));
    let u = rules
        .user(&claims(
            serde_json::json!({"sub": "u", "nhs_role": "R8000", "ods": "RBD"}),
        ))
        .unwrap();
    assert_eq!(u.scope.as_deref(), Some("user/*.rs"));
    // The default names are not read when the region names others.
    assert_eq!(
        rules.user(&claims(
            serde_json::json!({"sub": "u", "role": "R8000", "org": "RBD"})
        )),
        Err(AuthError::MissingClaim("nhs_role".into()))
    );
    // Without a default, a token without scopes is bounded by its role alone.
    let plain = ClaimRules::default()
        .user(&claims(
            serde_json::json!({"sub": "u", "role": "R8000", "org": "RBD"}),
        ))
        .unwrap();
    assert_eq!(plain.scope, None);
    assert!(plain.may("Anything", scopes::Interaction::Create));
}
