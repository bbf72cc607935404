//! The agent's state directory: its node id and credential, so a restart rejoins as the same
//! node. Written atomically (temp file, then rename) and readable by the owner only.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::AgentError;

const FILE: &str = "node.json";

/// What the server issued this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Credentials {
    pub node_id: String,
    pub credential: String,
}

pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<Self, AgentError> {
        use std::os::unix::fs::DirBuilderExt as _;
        // It holds the node's credential: this user's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AgentError::State(dir.to_owned(), e))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The saved credentials; `None` before the first registration. A file that cannot be
    /// parsed is treated as absent (the node registers anew), and said so.
    pub fn load(&self) -> Result<Option<Credentials>, AgentError> {
        let path = self.dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(credentials) => Ok(Some(credentials)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable state file; registering as a new node");
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::State(path, e)),
        }
    }

    pub fn save(&self, credentials: &Credentials) -> Result<(), AgentError> {
        let path = self.dir.join(FILE);
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let err = |e| AgentError::State(path.clone(), e);
        let bytes = serde_json::to_vec_pretty(credentials).map_err(|e| err(e.into()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn credentials_survive_a_restart_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("agent")).unwrap();
        assert_eq!(state.load().unwrap(), None);
        let creds = Credentials {
            node_id: "id".into(),
            credential: "secret".into(),
        };
        state.save(&creds).unwrap();
        let again = StateDir::open(&dir.path().join("agent")).unwrap();
        assert_eq!(again.load().unwrap(), Some(creds));
        let mode = std::fs::metadata(dir.path().join("agent").join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_garbled_state_file_means_a_fresh_registration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        assert_eq!(StateDir::open(dir.path()).unwrap().load().unwrap(), None);
    }
}
