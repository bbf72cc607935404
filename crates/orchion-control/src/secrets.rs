//! Projects' secrets: set, described, deleted, and opened for the tasks that refer to them.
//!
//! A value is sealed with ChaCha20-Poly1305 (`ring`) under the cluster's secrets key before it
//! reaches the store, with a fresh random nonce each time and the project and name as
//! associated data (so a sealed value moved to another row does not open). The store keeps the
//! key's id (a digest), never the key; the first key to seal a secret is recorded as the
//! cluster's, and a replica holding another one is refused in words instead of writing what
//! the others cannot open.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use orchion_domain::{FieldError, ProjectId, ValidationErrors};
use orchion_store::{ClaimedTask, Sealed, SealedSecret, SecretInfo, Signal, Store, StoreError};
use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};
use sha2::{Digest as _, Sha256};

/// The longest value a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// The cluster setting that records the id of the key secrets are sealed with.
const KEY_ID_SETTING: &str = "secrets_key_id";

/// The cluster's secrets key: 32 random bytes, written as base64 (or 64 hex digits).
pub struct SecretKey {
    key: LessSafeKey,
    id: Vec<u8>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &hex::encode(&self.id))
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A key from its text: base64 (standard or URL-safe, padded or not) or hex of 32 bytes.
    /// The error never quotes the text.
    pub fn from_text(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let text = text.trim();
        let bytes = hex_bytes(text)
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .or_else(|| base64::engine::general_purpose::URL_SAFE.decode(text).ok())
            .or_else(|| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).ok())
            .or_else(|| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok())
            .ok_or("the secrets key must be 32 bytes written as base64 or hex (`openssl rand -base64 32`)")?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != 32 {
            return Err(format!(
                "the secrets key must be 32 bytes; this one is {} (`openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| "the secrets key is not a ChaCha20-Poly1305 key".to_owned())?;
        let mut id = Sha256::new();
        id.update(b"orchion secrets key id\0");
        id.update(bytes);
        Ok(Self {
            key: LessSafeKey::new(key),
            id: id.finalize()[..16].to_vec(),
        })
    }

    /// A new random key and its text, for a server to keep when none is configured.
    pub fn generate() -> Result<(Self, String), String> {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system's random source failed".to_owned())?;
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        Ok((Self::from_bytes(&bytes)?, text))
    }

    /// The key's id as text (the first bytes of a digest), safe to show.
    pub fn id(&self) -> String {
        hex::encode(&self.id[..8])
    }

    fn seal(&self, project: ProjectId, name: &str, value: &str) -> Result<Sealed, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "the system's random source failed".to_owned())?;
        let mut sealed = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(project, name)),
                &mut sealed,
            )
            .map_err(|_| "sealing the secret failed".to_owned())?;
        Ok(Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext: sealed,
        })
    }

    fn open(&self, project: ProjectId, name: &str, sealed: &Sealed) -> Result<String, String> {
        if sealed.key_id != self.id {
            return Err(format!(
                "secret `{name}` was sealed under another secrets key than this server's ({}): give every server the same `secrets.key_file`",
                self.id()
            ));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce)
            .map_err(|_| format!("secret `{name}` is damaged (its nonce)"))?;
        let mut bytes = sealed.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(associated_data(project, name)), &mut bytes)
            .map_err(|_| {
                format!(
                    "secret `{name}` does not open with the secrets key: it is damaged or was moved"
                )
            })?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| format!("secret `{name}` is damaged (not text)"))
    }
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    (text.len() == 64).then(|| hex::decode(text).ok()).flatten()
}

fn associated_data(project: ProjectId, name: &str) -> Vec<u8> {
    let mut data = b"orchion secret\0".to_vec();
    data.extend_from_slice(project.as_uuid().as_bytes());
    data.extend_from_slice(name.as_bytes());
    data
}

/// Why a secret could not be set or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The name or value is not one a secret may have (a 422 naming the field).
    #[error("{0}")]
    Invalid(ValidationErrors),
    /// This server's key is not the one the cluster's secrets are sealed with.
    #[error("{0}")]
    OtherKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a project's sealed secrets, once read, serve claims and checks before they are
/// read again. A change made here is seen at once; one made on another replica as soon as its
/// signal arrives, and within this long if the signal is lost.
pub const READ_FOR: Duration = Duration::from_secs(5);

/// Projects' secrets, sealed under one key.
pub struct Secrets {
    store: Arc<dyn Store>,
    key: SecretKey,
    /// Each project's sealed secrets, as read lately (values stay sealed here).
    read: Mutex<Read>,
}

#[derive(Default)]
struct Read {
    /// Bumped by every forgetting, so a read that began before one is not kept after it.
    generation: u64,
    projects: HashMap<ProjectId, (Instant, Arc<Vec<SealedSecret>>)>,
}

impl Secrets {
    pub fn new(store: Arc<dyn Store>, key: SecretKey) -> Self {
        Self {
            store,
            key,
            read: Mutex::new(Read::default()),
        }
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Read> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the secrets read lately: the next claim or check reads the store.
    pub fn forget(&self) {
        let mut read = self.read();
        read.generation += 1;
        read.projects.clear();
    }

    /// A secret was set or deleted here: forget what was read, and tell the other replicas to.
    async fn changed(&self) {
        self.forget();
        if let Err(e) = self.store.signal(&[Signal::Secrets]).await {
            tracing::warn!(error = %e, "could not tell the other replicas a secret changed; they read it again within {READ_FOR:?}");
        }
    }

    /// `project`'s sealed secrets: as read within [`READ_FOR`], else from the store.
    async fn sealed(&self, project: ProjectId) -> Result<Arc<Vec<SealedSecret>>, StoreError> {
        let generation = {
            let read = self.read();
            if let Some((at, sealed)) = read.projects.get(&project)
                && at.elapsed() < READ_FOR
            {
                return Ok(sealed.clone());
            }
            read.generation
        };
        let sealed = Arc::new(self.store.sealed_secrets(project).await?);
        let mut read = self.read();
        if read.generation == generation {
            read.projects
                .insert(project, (Instant::now(), sealed.clone()));
        }
        Ok(sealed)
    }

    /// Whether this server's key is the cluster's, recording it as the cluster's when no
    /// secret was ever sealed: `Err` says which to fix.
    async fn check_key(&self) -> Result<(), SecretError> {
        let cluster = self
            .store
            .cluster_secret(KEY_ID_SETTING, &self.key.id)
            .await?;
        if cluster == self.key.id {
            Ok(())
        } else {
            Err(SecretError::OtherKey(format!(
                "this server's secrets key ({}) is not the cluster's ({}): give every server the same `secrets.key_file`",
                self.key.id(),
                hex::encode(cluster.get(..8).unwrap_or(&cluster))
            )))
        }
    }

    /// Sets `name` in `project` to `value`: made at version 1, or its next version.
    pub async fn put(
        &self,
        project: ProjectId,
        name: &str,
        value: &str,
        actor: &str,
    ) -> Result<SecretInfo, SecretError> {
        let mut errors = ValidationErrors::default();
        if let Err(why) = orchion_spec::check_secret_name(name) {
            errors.push(FieldError::new("name", why));
        }
        if value.is_empty() {
            errors.push(FieldError::new(
                "value",
                "a secret's value must not be empty (delete the secret instead)",
            ));
        } else if value.len() > MAX_SECRET_BYTES {
            errors.push(FieldError::new(
                "value",
                format!("a secret's value is at most {MAX_SECRET_BYTES} bytes"),
            ));
        }
        errors.into_result(()).map_err(SecretError::Invalid)?;
        self.check_key().await?;
        let sealed = self
            .key
            .seal(project, name, value)
            .map_err(SecretError::OtherKey)?;
        let secret = self
            .store
            .put_secret(project, name, &sealed, actor, orchion_store::now())
            .await?;
        self.changed().await;
        Ok(secret)
    }

    pub async fn get(
        &self,
        project: ProjectId,
        name: &str,
    ) -> Result<Option<SecretInfo>, StoreError> {
        self.store.secret_info(project, name).await
    }

    pub async fn list(&self, project: ProjectId) -> Result<Vec<SecretInfo>, StoreError> {
        self.store.list_secrets(project).await
    }

    pub async fn delete(&self, project: ProjectId, name: &str) -> Result<bool, StoreError> {
        let deleted = self.store.delete_secret(project, name).await?;
        if deleted {
            self.changed().await;
        }
        Ok(deleted)
    }

    /// Of `names` (referred to in `project`), those that do not exist.
    pub async fn missing(
        &self,
        project: ProjectId,
        names: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let found = self.sealed(project).await?;
        Ok(names
            .iter()
            .filter(|name| !found.iter().any(|s| &s.info.name == *name))
            .cloned()
            .collect())
    }

    /// The values each claimed task refers to, opened: per task, in order, the values by name
    /// (empty for a task that refers to none), or why they cannot be given (a secret deleted
    /// since the job was made, a key that is not the cluster's, a store that did not answer).
    pub async fn for_tasks(
        &self,
        tasks: &[ClaimedTask],
    ) -> Vec<Result<BTreeMap<String, String>, String>> {
        let mut opened = Vec::with_capacity(tasks.len());
        for task in tasks {
            let names = orchion_spec::secret_names(&task.executor, &task.spec);
            if names.is_empty() {
                opened.push(Ok(BTreeMap::new()));
                continue;
            }
            let Some(project) = task.project_id else {
                opened.push(Err(
                    "secrets belong to projects, and this task has none".to_owned()
                ));
                continue;
            };
            let sealed = match self.sealed(project).await {
                Ok(sealed) => sealed,
                Err(e) => {
                    opened.push(Err(format!("the task's secrets could not be read: {e}")));
                    continue;
                }
            };
            opened.push(
                names
                    .into_iter()
                    .map(|name| {
                        let secret = sealed.iter().find(|s| s.info.name == name).ok_or_else(|| {
                            format!("secret `{name}` does not exist in the job's project (deleted since the job was made?)")
                        })?;
                        let value = self.key.open(project, &name, &secret.sealed)?;
                        Ok((name, value))
                    })
                    .collect(),
            );
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_read_from_base64_or_hex_and_refused_in_words() {
        let (key, text) = SecretKey::generate().unwrap();
        assert_eq!(SecretKey::from_text(&text).unwrap().id(), key.id());
        let hex_text = "00".repeat(32);
        assert!(SecretKey::from_text(&hex_text).is_ok());
        let short = SecretKey::from_text("c2hvcnQ=").unwrap_err();
        assert!(short.contains("32 bytes; this one is 5"), "{short}");
        let garbage = SecretKey::from_text("not a key!").unwrap_err();
        assert!(!garbage.contains("not a key!"), "{garbage}");
    }

    #[test]
    fn a_sealed_value_opens_only_under_its_key_project_and_name() {
        let (key, _) = SecretKey::generate().unwrap();
        let project = ProjectId::new();
        let sealed = key.seal(project, "TOKEN", "hunter2hunter2").unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"hunter"));
        assert_eq!(
            key.open(project, "TOKEN", &sealed).unwrap(),
            "hunter2hunter2"
        );
        assert!(key.open(project, "OTHER", &sealed).is_err());
        assert!(key.open(ProjectId::new(), "TOKEN", &sealed).is_err());
        let (other, _) = SecretKey::generate().unwrap();
        let err = other.open(project, "TOKEN", &sealed).unwrap_err();
        assert!(err.contains("another secrets key"), "{err}");
        let again = key.seal(project, "TOKEN", "hunter2hunter2").unwrap();
        assert_ne!(again.nonce, sealed.nonce, "a fresh nonce each time");
    }

    fn task(project: ProjectId, spec: &str) -> ClaimedTask {
        ClaimedTask {
            job_id: orchion_domain::RunId::new(),
            project_id: Some(project),
            task_id: orchion_domain::TaskId::new(),
            attempt: 1,
            executor: "shell".into(),
            spec: spec.into(),
            timeouts: orchion_domain::Timeouts::default(),
            lease_expires_at: orchion_store::now(),
            traceparent: None,
        }
    }

    #[tokio::test]
    async fn replicas_with_another_key_are_refused_in_words() {
        let db = orchion_testkit::sqlite_database();
        let store = orchion_store::connect(db.url(), 2).await.unwrap();
        let project = ProjectId::DEFAULT;
        let first = Secrets::new(store.clone(), SecretKey::generate().unwrap().0);
        let other = Secrets::new(store, SecretKey::generate().unwrap().0);
        first.put(project, "TOKEN", "v4lue", "test").await.unwrap();
        match other.put(project, "TOKEN", "other", "test").await {
            Err(SecretError::OtherKey(why)) => assert!(why.contains("secrets.key_file"), "{why}"),
            outcome => panic!("expected a refusal, got {outcome:?}"),
        }
        let uses = task(project, r#"{"command":"x","env":{"T":{"secret":"TOKEN"}}}"#);
        let plain = task(project, r#"{"command":"x"}"#);
        let gone = task(project, r#"{"command":"x","env":{"T":{"secret":"GONE"}}}"#);
        let opened = first.for_tasks(&[uses.clone(), plain, gone]).await;
        assert_eq!(opened[0].as_ref().unwrap()["TOKEN"], "v4lue");
        assert!(opened[1].as_ref().unwrap().is_empty());
        assert!(
            opened[2]
                .as_ref()
                .unwrap_err()
                .contains("`GONE` does not exist")
        );
        let refused = other.for_tasks(&[uses]).await;
        assert!(
            refused[0]
                .as_ref()
                .unwrap_err()
                .contains("another secrets key"),
            "{refused:?}"
        );
    }
}
