//! The seal on a drain schedule: the schedule as the product wrote it, with an HMAC-SHA256 under a
//! key only the product holds (in its own Secret). Pure: the keys are given, nothing is read.
//!
//! Anyone who may patch a pod may write its annotations, and the deleter deletes with the
//! product's rights; so the deleter acts only on what the seal says, never on the readable
//! annotations beside it (they are for people, and are put back from the seal when someone
//! changes them). The sealed payload names the pod's uid and the installation, so a seal copied
//! to another pod, or to another installation's pod, does not open.
//!
//! Token: `v1.<key id>.<payload, base64url JSON>.<tag, base64url>`; the tag covers the version,
//! the key id and the payload exactly as written, and is checked (in constant time) before the
//! payload is parsed at all.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jiff::Timestamp;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::core::schedule::{Reason, SavedDeleteOptions, Schedule};

const VERSION: &str = "v1";
/// Separates the MAC's input from any other use of the key.
const DOMAIN: &[u8] = b"pod-graceful-drain/seal\0";
/// Longest token looked at: far above any schedule (labels are bounded by the pod's), far below
/// what would cost anything to refuse.
pub const MAX_TOKEN: usize = 64 * 1024;
/// How old a key must be before it seals: longer than replicas take to read a rotation.
pub const ACTIVATION: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;

/// Why a pod's schedule is not the product's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("it carries no seal")]
    Missing,
    #[error("its seal is malformed")]
    Malformed,
    #[error("its seal names key {0:?}, which this installation does not hold")]
    UnknownKey(String),
    #[error("its seal does not verify (the schedule was written by someone else)")]
    BadTag,
    #[error("its seal was made for another pod")]
    OtherPod,
    #[error("its seal was made by another installation")]
    OtherInstance,
}

/// One key: its id (named in every seal it makes), its bytes and when it was made.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Key {
    pub id: String,
    /// base64url of the key bytes.
    secret: String,
    pub created: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(id: String, secret: &[u8; KEY_BYTES], created: Timestamp) -> Key {
        Key {
            id,
            secret: B64.encode(secret),
            created: created.to_string(),
        }
    }

    fn hmac(&self) -> Option<hmac::Key> {
        let bytes = B64.decode(&self.secret).ok()?;
        (bytes.len() == KEY_BYTES).then(|| hmac::Key::new(hmac::HMAC_SHA256, &bytes))
    }

    fn created(&self) -> Option<Timestamp> {
        self.created.parse().ok()
    }
}

/// The keys of an installation, as kept in its Secret: the newest seals, every one verifies (so a
/// drain sealed before a rotation is carried out after it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySet {
    /// Newest last.
    keys: Vec<Key>,
    /// Until then, a drain without any seal (written by a version before seals) is adopted: the
    /// leader seals it as it stands. Set only when the keys were first made during an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adopt_unsealed_until: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("the seal keys are not valid JSON: {0}")]
    Json(String),
    #[error("the seal key set holds no usable key")]
    Empty,
}

/// What a seal holds besides the schedule: for whom it was made.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Payload {
    uid: String,
    instance: String,
    started_at: String,
    delete_at: String,
    requested_by: String,
    reason: Reason,
    delete_options: SavedDeleteOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    removed_labels: BTreeMap<String, String>,
}

impl KeySet {
    /// A first key set; `adopt_until` opens the window for drains of an earlier version.
    pub fn first(key: Key, adopt_until: Option<Timestamp>) -> KeySet {
        KeySet {
            keys: vec![key],
            adopt_unsealed_until: adopt_until.map(|t| t.to_string()),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<KeySet, KeysError> {
        let set: KeySet =
            serde_json::from_slice(bytes).map_err(|e| KeysError::Json(e.to_string()))?;
        if set.newest().is_none() {
            return Err(KeysError::Empty);
        }
        Ok(set)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serializes")
    }

    /// The key new seals are made with at `now`: the newest usable one that every replica has
    /// had time to read ([`ACTIVATION`] old), else the oldest usable one. So a seal never names a
    /// key another replica does not know yet (it would take the drain for a forgery).
    fn sealing(&self, now: Timestamp) -> Option<(&Key, hmac::Key)> {
        let active = |k: &&Key| {
            k.created().is_some_and(|c| {
                now.duration_since(c)
                    >= jiff::SignedDuration::try_from(ACTIVATION).unwrap_or_default()
            })
        };
        self.keys
            .iter()
            .rev()
            .filter(active)
            .find_map(|k| Some((k, k.hmac()?)))
            .or_else(|| self.keys.iter().find_map(|k| Some((k, k.hmac()?))))
    }

    /// The newest usable key.
    fn newest(&self) -> Option<(&Key, hmac::Key)> {
        self.keys.iter().rev().find_map(|k| Some((k, k.hmac()?)))
    }

    pub fn newest_id(&self) -> Option<&str> {
        self.newest().map(|(k, _)| k.id.as_str())
    }

    /// Whether the newest key is older than `every` (or its age is unknown).
    pub fn rotation_due(&self, now: Timestamp, every: std::time::Duration) -> bool {
        let Some(created) = self.newest().and_then(|(k, _)| k.created()) else {
            return true;
        };
        let age = now.duration_since(created);
        age.is_negative() || age.unsigned_abs() >= every
    }

    /// The set with `key` as the newest; keys superseded more than `keep` ago are dropped (no
    /// drain they sealed can still be running). The adoption window is closed.
    pub fn rotated(&self, key: Key, now: Timestamp, keep: std::time::Duration) -> KeySet {
        let mut kept = Vec::new();
        for (i, k) in self.keys.iter().enumerate() {
            // A key is superseded when its successor was made.
            let superseded = self.keys.get(i + 1).and_then(Key::created);
            let expired = superseded.is_some_and(|s| {
                let since = now.duration_since(s);
                since.is_positive() && since.unsigned_abs() > keep
            });
            if !expired {
                kept.push(k.clone());
            }
        }
        kept.push(key);
        KeySet {
            keys: kept,
            adopt_unsealed_until: None,
        }
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Whether a drain without a seal is adopted at `now`.
    pub fn adopts_unsealed(&self, now: Timestamp) -> bool {
        self.adopt_unsealed_until
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_some_and(|until| now < until)
    }

    /// Seals `schedule` for the pod `uid` of installation `instance`.
    pub fn seal(&self, uid: &str, instance: &str, schedule: &Schedule, now: Timestamp) -> String {
        let (key, hkey) = self
            .sealing(now)
            .expect("a parsed key set has a usable key");
        let payload = Payload {
            uid: uid.to_string(),
            instance: instance.to_string(),
            started_at: schedule.started_at.to_string(),
            delete_at: schedule.delete_at.to_string(),
            requested_by: schedule.requested_by.clone(),
            reason: schedule.reason,
            delete_options: schedule.delete_options.clone(),
            traceparent: schedule.traceparent.clone(),
            removed_labels: schedule.removed_labels.clone(),
        };
        let body = B64.encode(serde_json::to_vec(&payload).expect("plain struct serializes"));
        let signed = signed_part(&key.id, &body);
        let tag = hmac::sign(&hkey, &mac_input(&signed));
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// The schedule sealed in `token`, if it is the product's seal for this pod and installation.
    pub fn open(
        &self,
        uid: &str,
        instance: &str,
        token: Option<&str>,
    ) -> Result<Schedule, Unsealed> {
        let token = token.ok_or(Unsealed::Missing)?;
        if token.len() > MAX_TOKEN {
            return Err(Unsealed::Malformed);
        }
        let (signed, tag) = token.rsplit_once('.').ok_or(Unsealed::Malformed)?;
        let mut parts = signed.split('.');
        let (Some(VERSION), Some(key_id), Some(body), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Unsealed::Malformed);
        };
        let tag = B64.decode(tag).map_err(|_| Unsealed::Malformed)?;
        let hkey = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .and_then(Key::hmac)
            .ok_or_else(|| Unsealed::UnknownKey(key_id.chars().take(64).collect()))?;
        hmac::verify(&hkey, &mac_input(signed), &tag).map_err(|_| Unsealed::BadTag)?;
        // From here on the payload is the product's own.
        let bytes = B64.decode(body).map_err(|_| Unsealed::Malformed)?;
        let p: Payload = serde_json::from_slice(&bytes).map_err(|_| Unsealed::Malformed)?;
        if p.uid != uid {
            return Err(Unsealed::OtherPod);
        }
        if p.instance != instance {
            return Err(Unsealed::OtherInstance);
        }
        let time = |s: &str| s.parse::<Timestamp>().map_err(|_| Unsealed::Malformed);
        Ok(Schedule {
            started_at: time(&p.started_at)?,
            delete_at: time(&p.delete_at)?,
            requested_by: p.requested_by,
            reason: p.reason,
            delete_options: p.delete_options,
            traceparent: p.traceparent,
            removed_labels: p.removed_labels,
        })
    }
}

/// What a pod's draining label and seal say, for this installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// No draining label.
    Unmarked,
    /// Drained by this installation: the schedule it sealed (the readable annotations beside it
    /// may say otherwise; they are not read).
    Sealed(Schedule),
    /// Drained by this installation's earlier version, before seals, inside the adoption window:
    /// the readable annotations are the schedule.
    Adopted,
    /// Labelled as drained by this installation, but not sealed by it: not a drain.
    Forged(Unsealed),
    /// Labelled as drained by another installation (its own deleter's business).
    Foreign,
}

/// Reads the mark of a pod (`uid`, labels and annotations) for installation `instance`.
pub fn mark(
    keys: &KeySet,
    instance: &str,
    uid: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    now: Timestamp,
) -> Mark {
    match labels.get(crate::core::keys::DRAINING_LABEL) {
        None => Mark::Unmarked,
        Some(v) if v != instance => Mark::Foreign,
        Some(_) => match keys.open(
            uid,
            instance,
            annotations.get(crate::core::keys::SEAL).map(String::as_str),
        ) {
            Ok(s) => Mark::Sealed(s),
            Err(Unsealed::Missing) if keys.adopts_unsealed(now) => Mark::Adopted,
            Err(e) => Mark::Forged(e),
        },
    }
}

fn signed_part(key_id: &str, body: &str) -> String {
    format!("{VERSION}.{key_id}.{body}")
}

fn mac_input(signed: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(signed.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn key(id: &str, byte: u8, created: &str) -> Key {
        Key::new(id.into(), &[byte; KEY_BYTES], t(created))
    }

    fn schedule() -> Schedule {
        Schedule {
            started_at: t("2026-11-25T10:00:00Z"),
            delete_at: t("2026-11-25T10:01:30Z"),
            requested_by: "jane".into(),
            reason: Reason::Eviction,
            delete_options: SavedDeleteOptions {
                grace_period_seconds: Some(5),
                propagation_policy: None,
            },
            traceparent: None,
            removed_labels: [("app".to_string(), "web".to_string())].into(),
        }
    }

    fn keys() -> KeySet {
        KeySet::first(key("k1", 1, "2026-11-01T00:00:00Z"), None)
    }

    #[test]
    fn a_seal_opens_to_the_schedule_it_was_made_of() {
        let token = keys().seal("uid-1", "default", &schedule(), t("2026-12-03T00:00:00Z"));
        assert_eq!(
            keys().open("uid-1", "default", Some(&token)),
            Ok(schedule())
        );
    }

    #[test]
    fn a_seal_does_not_open_for_another_pod_installation_or_key() {
        let k = keys();
        let token = k.seal("uid-1", "default", &schedule(), t("2026-12-03T00:00:00Z"));
        assert_eq!(
            k.open("uid-2", "default", Some(&token)),
            Err(Unsealed::OtherPod)
        );
        assert_eq!(
            k.open("uid-1", "other", Some(&token)),
            Err(Unsealed::OtherInstance)
        );
        // The same id with other bytes: someone else's key.
        let foreign = KeySet::first(key("k1", 2, "2026-11-01T00:00:00Z"), None);
        assert_eq!(
            foreign.open("uid-1", "default", Some(&token)),
            Err(Unsealed::BadTag)
        );
        let unknown = KeySet::first(key("k9", 1, "2026-11-01T00:00:00Z"), None);
        assert_eq!(
            unknown.open("uid-1", "default", Some(&token)),
            Err(Unsealed::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn any_change_to_a_seal_breaks_it() {
        let k = keys();
        let token = k.seal("uid-1", "default", &schedule(), t("2026-12-03T00:00:00Z"));
        // A later delete-at, re-encoded with the same tag.
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let body = signed.rsplit_once('.').unwrap().1;
        let json = String::from_utf8(B64.decode(body).unwrap()).unwrap();
        let moved = json.replace("10:01:30Z", "23:59:59Z");
        assert_ne!(json, moved);
        let forged = format!("v1.k1.{}.{tag}", B64.encode(moved));
        assert_eq!(
            k.open("uid-1", "default", Some(&forged)),
            Err(Unsealed::BadTag)
        );
        for bad in [
            "",
            "v1",
            "v1.k1.e30",
            "v2.k1.e30.AAAA",
            "v1.k1.e30.!!!",
            "v1.k1.e30.AAAA.extra",
        ] {
            assert!(k.open("uid-1", "default", Some(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(
            k.open("uid-1", "default", Some(&"a".repeat(MAX_TOKEN + 1))),
            Err(Unsealed::Malformed)
        );
        assert_eq!(k.open("uid-1", "default", None), Err(Unsealed::Missing));
    }

    #[test]
    fn after_a_rotation_old_seals_open_and_new_ones_use_the_new_key() {
        let k = keys();
        let old = k.seal("uid-1", "default", &schedule(), t("2026-12-03T00:00:00Z"));
        let r = k.rotated(
            key("k2", 2, "2026-12-01T00:00:00Z"),
            t("2026-12-01T00:00:00Z"),
            Duration::from_secs(3600),
        );
        assert_eq!(r.open("uid-1", "default", Some(&old)), Ok(schedule()));
        // Not before every replica has had time to read the new key.
        let early = r.seal("uid-1", "default", &schedule(), t("2026-12-01T00:00:10Z"));
        assert!(early.starts_with("v1.k1."), "{early}");
        let new = r.seal("uid-1", "default", &schedule(), t("2026-12-01T00:01:00Z"));
        assert!(new.starts_with("v1.k2."), "{new}");
        // Once k1 was superseded longer than `keep` ago it is dropped on the next rotation.
        let r2 = r.rotated(
            key("k3", 3, "2026-12-02T00:00:00Z"),
            t("2026-12-02T00:00:00Z"),
            Duration::from_secs(3600),
        );
        assert_eq!(r2.key_ids(), vec!["k2", "k3"]);
        assert_eq!(
            r2.open("uid-1", "default", Some(&old)),
            Err(Unsealed::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn the_mark_reads_label_and_seal_together() {
        let k = keys();
        let now = t("2026-11-25T10:00:10Z");
        let token = k.seal("uid-1", "default", &schedule(), t("2026-12-03T00:00:00Z"));
        let labels = |v: &str| -> BTreeMap<String, String> {
            [(crate::core::keys::DRAINING_LABEL.to_string(), v.to_string())].into()
        };
        let sealed: BTreeMap<String, String> =
            [(crate::core::keys::SEAL.to_string(), token)].into();
        let none = BTreeMap::new();
        assert_eq!(
            mark(&k, "default", "uid-1", &none, &sealed, now),
            Mark::Unmarked
        );
        assert_eq!(
            mark(&k, "default", "uid-1", &labels("default"), &sealed, now),
            Mark::Sealed(schedule())
        );
        assert_eq!(
            mark(&k, "default", "uid-1", &labels("blue"), &sealed, now),
            Mark::Foreign
        );
        assert_eq!(
            mark(&k, "default", "uid-1", &labels("default"), &none, now),
            Mark::Forged(Unsealed::Missing)
        );
        assert_eq!(
            mark(&k, "default", "uid-2", &labels("default"), &sealed, now),
            Mark::Forged(Unsealed::OtherPod)
        );
        // Inside the adoption window an unsealed drain is an earlier version's; a bad seal is
        // still forged.
        let window = KeySet::first(
            key("k1", 1, "2026-11-01T00:00:00Z"),
            Some(t("2026-11-25T11:00:00Z")),
        );
        assert_eq!(
            mark(&window, "default", "uid-1", &labels("default"), &none, now),
            Mark::Adopted
        );
        assert_eq!(
            mark(
                &window,
                "default",
                "uid-2",
                &labels("default"),
                &sealed,
                now
            ),
            Mark::Forged(Unsealed::OtherPod)
        );
    }

    #[test]
    fn rotation_is_due_by_the_newest_keys_age() {
        let k = keys();
        let day = Duration::from_secs(86_400);
        assert!(!k.rotation_due(t("2026-11-02T00:00:00Z"), 30 * day));
        assert!(k.rotation_due(t("2026-12-01T00:00:00Z"), 30 * day));
        // A key "made" in the future (a skewed clock) is due at once.
        assert!(k.rotation_due(t("2026-10-01T00:00:00Z"), 30 * day));
    }

    #[test]
    fn the_key_set_round_trips_and_refuses_junk() {
        let k = KeySet::first(
            key("k1", 1, "2026-11-01T00:00:00Z"),
            Some(t("2026-11-01T00:30:00Z")),
        );
        assert_eq!(KeySet::parse(&k.to_bytes()), Ok(k.clone()));
        assert!(k.adopts_unsealed(t("2026-11-01T00:10:00Z")));
        assert!(!k.adopts_unsealed(t("2026-11-01T00:31:00Z")));
        assert!(!keys().adopts_unsealed(t("2026-11-01T00:10:00Z")));
        assert!(KeySet::parse(b"{").is_err());
        assert_eq!(KeySet::parse(br#"{"keys":[]}"#), Err(KeysError::Empty));
        // A key whose bytes are not a key is no key.
        assert_eq!(
            KeySet::parse(br#"{"keys":[{"id":"k","secret":"AAAA","created":"x"}]}"#),
            Err(KeysError::Empty)
        );
        // The Debug output never shows key bytes.
        assert!(!format!("{k:?}").contains(&B64.encode([1u8; KEY_BYTES])));
    }
}
