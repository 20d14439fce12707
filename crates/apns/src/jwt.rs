//! Provider tokens: the ES256 JWT of token auth, one per (team id, key id), shared by
//! every connection that uses the key, refreshed by the rules Apple sets, and the same
//! in every process that holds the key.
//!
//! One token per key for a whole fleet, without coordination: a token's `iat` is the
//! start of the current period of a grid shared by every process (`iat = now - now %
//! period`, the period inside Apple's 20-60 minute window, default 50 min), and ES256
//! signatures are deterministic (RFC 6979: the nonce comes from the key and the
//! message), so every process holding the key signs the byte-identical token for the
//! same period, and a restarted process picks up the token it had. APNs sees one token
//! per key per period: never an update sooner than 20 minutes, never a token older than
//! the period (under 60 minutes).
//!
//! The clock assumption: the processes' clocks agree to within seconds (NTP). Around a
//! period's boundary, for as long as two clocks disagree, some processes send the new
//! period's token while others still send the old one; both are valid (the old one is
//! less than a period old, the new one a whole period newer, at least 20 minutes).
//! Every process must use the same period (`ClientSettings::token_refresh`).
//!
//! Rules (pure functions below, tested with a fake clock):
//! - a token is used until its period ends, then replaced by the next period's;
//! - on 403 ExpiredProviderToken the caller may force one early refresh if the token is
//!   at least 20 minutes old (an `iat` of now, off the grid: the clock or the grid is
//!   wrong); otherwise the clock is wrong and the app's credentials are broken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderValue;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;
use serde::Serialize;

use crate::secret::Secret;

/// Time source in unix seconds; tests inject their own.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// When tokens are replaced: `refresh_after` is the grid's period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenPolicy {
    pub refresh_after: Duration,
    pub min_interval: Duration,
}

/// Apple's floor between two tokens of one key.
pub const MIN_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// Apple's ceiling on a token's age.
pub const MAX_AGE: Duration = Duration::from_secs(60 * 60);

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            refresh_after: Duration::from_secs(50 * 60),
            min_interval: MIN_INTERVAL,
        }
    }
}

impl TokenPolicy {
    /// A policy inside Apple's window, or a sentence that says why not.
    pub fn new(refresh_after: Duration) -> Result<TokenPolicy, JwtError> {
        if refresh_after < MIN_INTERVAL || refresh_after >= MAX_AGE {
            return Err(JwtError::RefreshOutOfRange(refresh_after.as_secs()));
        }
        Ok(TokenPolicy {
            refresh_after,
            min_interval: MIN_INTERVAL,
        })
    }

    /// The start of the period `now` falls in: the `iat` of every process's token.
    pub fn slot(&self, now: u64) -> u64 {
        let period = self.refresh_after.as_secs().max(1);
        now - now % period
    }

    /// Is a token issued at `issued_at` due for replacement at `now`: has a later
    /// period begun? (A clock that went back keeps the token it has.)
    pub fn refresh_due(&self, issued_at: u64, now: u64) -> bool {
        self.slot(now) > issued_at
    }

    /// May a token issued at `issued_at` be replaced early at `now` (after 403 ExpiredProviderToken)?
    pub fn early_refresh_allowed(&self, issued_at: u64, now: u64) -> bool {
        now.saturating_sub(issued_at) >= self.min_interval.as_secs()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(
        "the signing key for key id {key_id} is not a PKCS#8 EC P-256 private key (an Apple .p8 file): {reason}"
    )]
    ParseKey { key_id: String, reason: String },
    #[error("signing a provider token for key id {key_id} failed: {reason}")]
    Sign { key_id: String, reason: String },
    #[error("team id {0:?} must be Apple's 10-character team identifier (letters and digits)")]
    BadTeamId(String),
    #[error("key id {0:?} must be Apple's 10-character key identifier (letters and digits)")]
    BadKeyId(String),
    #[error(
        "token refresh interval of {0} s is outside Apple's window: at least 1200 s (20 min) and less than 3600 s (60 min)"
    )]
    RefreshOutOfRange(u64),
}

/// One signed token, ready to put in the `authorization` header.
pub struct ProviderToken {
    header: HeaderValue,
    pub issued_at: u64,
    /// Increases by one with every new token of this signer.
    pub generation: u64,
}

impl std::fmt::Debug for ProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderToken")
            .field("header", &"[redacted]")
            .field("issued_at", &self.issued_at)
            .field("generation", &self.generation)
            .finish()
    }
}

impl ProviderToken {
    /// `bearer <jwt>`. The value is a secret: send it, never print it.
    pub fn authorization(&self) -> &HeaderValue {
        &self.header
    }
}

/// What to do after 403 ExpiredProviderToken.
#[derive(Debug)]
pub enum AfterExpired {
    /// A newer token exists (refreshed now or by another request): resend with it.
    Resend(Arc<ProviderToken>),
    /// The token is younger than the 20-minute floor: refreshing would earn a 429,
    /// so the clock or the key is wrong.
    TooSoon,
}

#[derive(Serialize)]
struct JwtHeader<'a> {
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

fn is_apple_id(s: &str) -> bool {
    s.len() == 10 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Signs and caches the provider token of one (team id, key id).
pub struct TokenSigner {
    team_id: String,
    key_id: String,
    key: Secret<SigningKey>,
    clock: Arc<dyn Clock>,
    policy: TokenPolicy,
    current: RwLock<Arc<ProviderToken>>,
    refresh_lock: Mutex<()>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Parse the `.p8` PEM and sign the first token (so a bad key fails at start).
    pub fn new(
        team_id: &str,
        key_id: &str,
        key_pem: &Secret<Vec<u8>>,
        policy: TokenPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<TokenSigner, JwtError> {
        if !is_apple_id(team_id) {
            return Err(JwtError::BadTeamId(team_id.into()));
        }
        if !is_apple_id(key_id) {
            return Err(JwtError::BadKeyId(key_id.into()));
        }
        let parse_err = |reason: String| JwtError::ParseKey {
            key_id: key_id.into(),
            reason,
        };
        let pem = std::str::from_utf8(key_pem.expose())
            .map_err(|_| parse_err("the file is not PEM text".into()))?;
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| parse_err(e.to_string()))?;
        let key = Secret::new(key);
        let first = sign(team_id, key_id, &key, policy.slot(clock.now()), 0)?;
        Ok(TokenSigner {
            team_id: team_id.into(),
            key_id: key_id.into(),
            key,
            clock,
            policy,
            current: RwLock::new(Arc::new(first)),
            refresh_lock: Mutex::new(()),
        })
    }

    pub fn team_id(&self) -> &str {
        &self.team_id
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The token to use now: this period's.
    pub fn current(&self) -> Result<Arc<ProviderToken>, JwtError> {
        let now = self.clock.now();
        {
            let t = self.current.read().expect("token lock");
            if !self.policy.refresh_due(t.issued_at, now) {
                return Ok(t.clone());
            }
        }
        let slot = self.policy.slot(now);
        self.replace_if(slot, |t| self.policy.refresh_due(t.issued_at, now))
    }

    /// Age in seconds of the current token (for the JWT age metric).
    pub fn age(&self) -> u64 {
        let t = self.current.read().expect("token lock");
        self.clock.now().saturating_sub(t.issued_at)
    }

    /// After 403 ExpiredProviderToken for a request that carried `used`.
    pub fn after_expired(&self, used: &ProviderToken) -> Result<AfterExpired, JwtError> {
        let now = self.clock.now();
        {
            let t = self.current.read().expect("token lock");
            if t.generation > used.generation {
                return Ok(AfterExpired::Resend(t.clone()));
            }
        }
        if !self.policy.early_refresh_allowed(used.issued_at, now) {
            return Ok(AfterExpired::TooSoon);
        }
        self.replace_if(now, |t| t.generation <= used.generation)
            .map(AfterExpired::Resend)
    }

    /// Replace the token by one issued at `iat` if `stale` still holds under the
    /// refresh lock, so that many requests noticing the same stale token sign only one
    /// new token.
    fn replace_if(
        &self,
        iat: u64,
        stale: impl Fn(&ProviderToken) -> bool,
    ) -> Result<Arc<ProviderToken>, JwtError> {
        let _one_signer = self.refresh_lock.lock().expect("refresh lock");
        let cur = self.current.read().expect("token lock").clone();
        if !stale(&cur) {
            return Ok(cur);
        }
        let new = Arc::new(sign(
            &self.team_id,
            &self.key_id,
            &self.key,
            iat,
            cur.generation + 1,
        )?);
        *self.current.write().expect("token lock") = new.clone();
        tracing::info!(team_id = %self.team_id, key_id = %self.key_id, generation = new.generation, "provider token refreshed");
        Ok(new)
    }
}

/// An ES256 JWT as APNs wants it: header `alg` and `kid`, claims `iss` and `iat`.
/// ECDSA with RFC 6979 nonces (p256's `Signer`), so one key, team and `iat` always give
/// the same token: every replica of a fleet presents one token per period.
fn sign(
    team_id: &str,
    key_id: &str,
    key: &Secret<SigningKey>,
    now: u64,
    generation: u64,
) -> Result<ProviderToken, JwtError> {
    let sign_err = |reason: String| JwtError::Sign {
        key_id: key_id.into(),
        reason,
    };
    let header = serde_json::to_vec(&JwtHeader {
        alg: "ES256",
        kid: key_id,
    })
    .map_err(|e| sign_err(e.to_string()))?;
    let claims = serde_json::to_vec(&Claims {
        iss: team_id,
        iat: now,
    })
    .map_err(|e| sign_err(e.to_string()))?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature: Signature = key
        .expose()
        .try_sign(input.as_bytes())
        .map_err(|e| sign_err(e.to_string()))?;
    let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    let value = HeaderValue::try_from(format!("bearer {jwt}")).map_err(|e| JwtError::Sign {
        key_id: key_id.into(),
        reason: e.to_string(),
    })?;
    Ok(ProviderToken {
        header: value,
        issued_at: now,
        generation,
    })
}

/// One signer per (team id, key id) for the whole process, so that every app and
/// every connection using a key shares its token.
#[derive(Default)]
pub struct SignerRegistry {
    signers: Mutex<HashMap<(String, String), Arc<TokenSigner>>>,
}

impl SignerRegistry {
    pub fn get_or_create(
        &self,
        team_id: &str,
        key_id: &str,
        key_pem: &Secret<Vec<u8>>,
        policy: TokenPolicy,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<TokenSigner>, JwtError> {
        let mut map = self.signers.lock().expect("registry lock");
        let k = (team_id.to_string(), key_id.to_string());
        if let Some(s) = map.get(&k) {
            return Ok(s.clone());
        }
        let s = Arc::new(TokenSigner::new(team_id, key_id, key_pem, policy, clock)?);
        map.insert(k, s.clone());
        Ok(s)
    }
}

/// A clock for tests: starts where told and moves when told.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(std::sync::atomic::AtomicU64::new(now)))
    }
    pub fn advance(&self, by: Duration) {
        self.0
            .fetch_add(by.as_secs(), std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    fn keypair() -> (Secret<Vec<u8>>, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (
            Secret::new(kp.serialize_pem().into_bytes()),
            kp.public_key_pem(),
        )
    }

    const MIN: u64 = 60;

    #[test]
    fn policy_rules() {
        let p = TokenPolicy::default();
        let start = 1_000 * 50 * MIN; // a period's start
        assert_eq!(p.slot(start + 49 * MIN), start);
        assert!(!p.refresh_due(start, start + 49 * MIN));
        assert!(p.refresh_due(start, start + 50 * MIN), "the next period");
        assert!(
            !p.refresh_due(start, start - 1),
            "a clock that went back keeps its token"
        );
        assert!(!p.early_refresh_allowed(1000, 1000 + 19 * MIN));
        assert!(p.early_refresh_allowed(1000, 1000 + 20 * MIN));
        assert!(TokenPolicy::new(Duration::from_secs(19 * MIN)).is_err());
        assert!(TokenPolicy::new(Duration::from_secs(60 * MIN)).is_err());
        assert!(TokenPolicy::new(Duration::from_secs(20 * MIN)).is_ok());
        assert!(TokenPolicy::new(Duration::from_secs(59 * MIN)).is_ok());
    }

    #[test]
    fn token_has_the_claims_apple_wants_and_verifies() {
        let (key, public) = keypair();
        let clock = ManualClock::new(1_700_000_000);
        let s = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &key,
            TokenPolicy::default(),
            clock,
        )
        .unwrap();
        let t = s.current().unwrap();
        let v = t.authorization().to_str().unwrap().to_string();
        let jwt = v.strip_prefix("bearer ").unwrap();
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));
        let mut val = Validation::new(Algorithm::ES256);
        val.required_spec_claims.clear();
        val.validate_exp = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(
            jwt,
            &DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            &val,
        )
        .unwrap();
        let period_start = 1_700_000_000 - 1_700_000_000 % (50 * MIN);
        assert_eq!(
            data.claims,
            serde_json::json!({"iss": "TEAM123456", "iat": period_start}),
            "iat is the start of the shared period"
        );
        assert!(
            !format!("{t:?}").contains(jwt),
            "Debug must not print the token"
        );
        assert!(!format!("{s:?}").contains("PRIVATE"));
    }

    #[test]
    fn two_signers_with_one_key_sign_the_same_token_in_a_period() {
        let (key, _) = keypair();
        let start = 20_000 * 50 * MIN;
        let first = ManualClock::new(start + 3);
        let a = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &key,
            TokenPolicy::default(),
            first.clone(),
        )
        .unwrap();
        // Another process, started 37 minutes later (or this one restarted).
        let later = ManualClock::new(start + 37 * MIN);
        let b = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &key,
            TokenPolicy::default(),
            later.clone(),
        )
        .unwrap();
        let text = |s: &TokenSigner| {
            s.current()
                .unwrap()
                .authorization()
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            text(&a),
            text(&b),
            "byte-identical: deterministic ES256, shared iat"
        );
        // The next period: both move to the same new token.
        first.set(start + 50 * MIN + 1);
        later.set(start + 50 * MIN + 59);
        assert_eq!(text(&a), text(&b));
        assert_ne!(text(&a), {
            first.set(start);
            let c = TokenSigner::new(
                "TEAM123456",
                "KEY1234567",
                &key,
                TokenPolicy::default(),
                first.clone(),
            )
            .unwrap();
            text(&c)
        });
    }

    #[test]
    fn refreshes_on_the_timer_and_shares_the_token() {
        let (key, _) = keypair();
        let clock = ManualClock::new(50 * MIN * 20);
        let s = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &key,
            TokenPolicy::default(),
            clock.clone(),
        )
        .unwrap();
        let t0 = s.current().unwrap();
        clock.advance(Duration::from_secs(49 * MIN));
        assert_eq!(
            s.current().unwrap().generation,
            t0.generation,
            "49 min: same token"
        );
        clock.advance(Duration::from_secs(MIN));
        let t1 = s.current().unwrap();
        assert_eq!(t1.generation, t0.generation + 1, "50 min: new token");
        assert_eq!(t1.issued_at, 50 * MIN * 21);
        assert_eq!(
            s.current().unwrap().generation,
            t1.generation,
            "one refresh, not one per call"
        );
    }

    #[test]
    fn expired_provider_token_refreshes_once_if_the_floor_allows() {
        let (key, _) = keypair();
        let clock = ManualClock::new(50 * MIN * 20);
        let s = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &key,
            TokenPolicy::default(),
            clock.clone(),
        )
        .unwrap();
        let t0 = s.current().unwrap();
        clock.advance(Duration::from_secs(10 * MIN));
        assert!(matches!(
            s.after_expired(&t0).unwrap(),
            AfterExpired::TooSoon
        ));
        clock.advance(Duration::from_secs(11 * MIN));
        let AfterExpired::Resend(t1) = s.after_expired(&t0).unwrap() else {
            panic!("21 min: refresh")
        };
        assert_eq!(t1.generation, 1);
        // A second request that also carried t0 gets t1, no third token.
        let AfterExpired::Resend(again) = s.after_expired(&t0).unwrap() else {
            panic!("resend")
        };
        assert_eq!(again.generation, 1);
        // The fresh token failing too means the clock is wrong: no refresh.
        assert!(matches!(
            s.after_expired(&t1).unwrap(),
            AfterExpired::TooSoon
        ));
    }

    #[test]
    fn registry_shares_one_signer_per_key() {
        let (key, _) = keypair();
        let reg = SignerRegistry::default();
        let c: Arc<dyn Clock> = Arc::new(SystemClock);
        let a = reg
            .get_or_create(
                "TEAM123456",
                "KEY1234567",
                &key,
                TokenPolicy::default(),
                c.clone(),
            )
            .unwrap();
        let b = reg
            .get_or_create(
                "TEAM123456",
                "KEY1234567",
                &key,
                TokenPolicy::default(),
                c.clone(),
            )
            .unwrap();
        let other = reg
            .get_or_create("TEAM123456", "KEY7654321", &key, TokenPolicy::default(), c)
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
    }

    #[test]
    fn bad_inputs_say_what_to_fix() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let junk =
            Secret::new(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n".to_vec());
        let e = TokenSigner::new(
            "TEAM123456",
            "KEY1234567",
            &junk,
            TokenPolicy::default(),
            clock.clone(),
        )
        .unwrap_err();
        assert!(e.to_string().contains(".p8"), "{e}");
        assert!(!e.to_string().contains("nope"));
        let (key, _) = keypair();
        assert!(matches!(
            TokenSigner::new(
                "team",
                "KEY1234567",
                &key,
                TokenPolicy::default(),
                clock.clone()
            ),
            Err(JwtError::BadTeamId(_))
        ));
        assert!(matches!(
            TokenSigner::new("TEAM123456", "KEY", &key, TokenPolicy::default(), clock),
            Err(JwtError::BadKeyId(_))
        ));
    }
}
