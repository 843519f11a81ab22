//! Keeps the seal keys in a Secret of the product's namespace (created empty by the chart, read
//! and written only by the product's ServiceAccount) and hands every replica the current set.
//!
//! Any replica that finds the Secret empty makes the first key, one that finds the newest key
//! older than the rotation period adds a new one; both writes carry the resourceVersion read, so
//! replicas racing make one write and the losers re-read. A seal naming a key this replica does
//! not know yet (made a moment ago by another) asks for a re-read before it is judged.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Notify;

use crate::core::seal::{KEY_BYTES, Key, KeySet, KeysError};

/// The Secret's data key that holds the key set.
pub const DATA_KEY: &str = "keys.json";
/// How often the Secret is re-read (a rotation by another replica is seen within this).
pub const POLL: Duration = Duration::from_secs(10);
const REREAD_SPACING: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SealKeysError {
    #[error("Secret {0} does not exist (the chart creates it)")]
    Missing(String),
    #[error("Secret {origin}: {source}")]
    Keys { origin: String, source: KeysError },
    #[error("no randomness for a new key")]
    Random,
    #[error("reading or writing the Secret: {0}")]
    Api(#[from] kube::Error),
    #[error("the Secret holds no key yet")]
    NotYet,
}

/// The keys as this replica knows them (none until the first read).
#[derive(Clone, Default)]
pub struct SealKeys {
    set: Arc<RwLock<Option<Arc<KeySet>>>>,
    reread: Arc<Notify>,
}

impl SealKeys {
    /// A fixed set (for a deleter run without a keeper, and tests).
    pub fn fixed(set: KeySet) -> SealKeys {
        let keys = SealKeys::default();
        keys.put(set);
        keys
    }

    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn put(&self, set: KeySet) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
    }

    /// Asks the keeper to re-read the Secret now (a seal named a key not known here).
    pub fn reread_soon(&self) {
        self.reread.notify_one();
    }
}

/// Reads the key set without ever writing (the uninstall hook's view); `None`: no key was made.
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<KeySet>, SealKeysError> {
    let origin = format!("Secret {namespace}/{name}");
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?
        .ok_or_else(|| SealKeysError::Missing(origin.clone()))?;
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(DATA_KEY))
        .map(|b| KeySet::parse(&b.0).map_err(|source| SealKeysError::Keys { origin, source }))
        .transpose()
}

pub struct KeyKeeper {
    pub client: Client,
    pub namespace: String,
    pub name: String,
    pub keys: SealKeys,
    /// A new key is made when the newest is this old.
    pub rotate_every: Duration,
    /// How long a superseded key still verifies: longer than any drain it may have sealed.
    pub keep_superseded: Duration,
    /// When the first key is made while this installation's Lease already exists (so an earlier
    /// version ran: every replica of this one makes or reads the keys before it elects), drains
    /// without a seal (that version's) are adopted for this long; zero: never.
    pub adopt_unsealed: Duration,
    /// The installation's Lease.
    pub lease_name: String,
}

impl KeyKeeper {
    fn origin(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    /// Rounds until the keys are known: no drain can be started or judged without them.
    pub async fn first_keys(&self) {
        crate::k8s::until_ok("no seal keys yet", Duration::from_secs(5), || async {
            self.round().await?;
            self.keys.get().map(|_| ()).ok_or(SealKeysError::NotYet)
        })
        .await;
    }

    /// One round: read, make the first key or rotate when due, publish.
    pub async fn round(&self) -> Result<(), SealKeysError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..3 {
            let mut secret = api
                .get_opt(&self.name)
                .await?
                .ok_or_else(|| SealKeysError::Missing(self.origin()))?;
            let now = Timestamp::now();
            let stored = secret
                .data
                .as_ref()
                .and_then(|d| d.get(DATA_KEY))
                .map(|b| KeySet::parse(&b.0));
            let next = match stored {
                Some(Ok(set)) if !set.rotation_due(now, self.rotate_every) => {
                    self.keys.put(set);
                    return Ok(());
                }
                Some(Ok(set)) => {
                    let rotated = set.rotated(self.new_key(now)?, now, self.keep_superseded);
                    tracing::info!(secret = %self.origin(), keys = ?rotated.key_ids(), "seal key rotated");
                    rotated
                }
                None => {
                    let upgrade = !self.adopt_unsealed.is_zero()
                        && Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
                            self.client.clone(),
                            &self.namespace,
                        )
                        .get_opt(&self.lease_name)
                        .await?
                        .is_some();
                    let adopt = upgrade.then(|| {
                        now.checked_add(
                            jiff::SignedDuration::try_from(self.adopt_unsealed).unwrap_or_default(),
                        )
                        .unwrap_or(Timestamp::MAX)
                    });
                    tracing::info!(secret = %self.origin(), adopt_unsealed_until = ?adopt, "first seal key made");
                    KeySet::first(self.new_key(now)?, adopt)
                }
                // Never overwritten: a person may have damaged it, and every drain in flight is
                // sealed with what it held. Drains stop being started until it is repaired.
                Some(Err(source)) => {
                    return Err(SealKeysError::Keys {
                        origin: self.origin(),
                        source,
                    });
                }
            };
            secret
                .data
                .get_or_insert_default()
                .insert(DATA_KEY.into(), ByteString(next.to_bytes()));
            let pp = PostParams {
                field_manager: Some(crate::k8s::FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            // The resourceVersion read above guards the write: one replica wins a race.
            match api.replace(&self.name, &pp, &secret).await {
                Ok(_) => {
                    self.keys.put(next);
                    return Ok(());
                }
                Err(e) if crate::k8s::outcome_of(&e) == Some(crate::k8s::Outcome::Conflict) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Lost three races in a row: the winner's keys are read on the next round.
        Ok(())
    }

    fn new_key(&self, now: Timestamp) -> Result<Key, SealKeysError> {
        let rng = SystemRandom::new();
        let mut secret = [0u8; KEY_BYTES];
        let mut id = [0u8; 6];
        rng.fill(&mut secret).map_err(|_| SealKeysError::Random)?;
        rng.fill(&mut id).map_err(|_| SealKeysError::Random)?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Key::new(id, &secret, now))
    }

    /// Rounds every `POLL` (or at once when asked) until the process ends; failures keep the
    /// keys known so far.
    pub fn spawn(self) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    // However many seals name unknown keys, one read per second at most.
                    _ = self.keys.reread.notified() => tokio::time::sleep(REREAD_SPACING).await,
                }
                if let Err(e) = self.round().await {
                    tracing::warn!(error = %e, "could not read the seal keys; keeping the last ones");
                }
            }
        });
    }
}
