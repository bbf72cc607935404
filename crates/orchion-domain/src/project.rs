//! Projects: the namespace that owns workflows, runs, deployments, tokens and quotas.

use std::{fmt, str::FromStr};

use time::OffsetDateTime;

use crate::{FieldError, ProjectId, ValidationErrors};

/// The longest project name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// The longest project description accepted, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4000;
/// The longest project type accepted, in characters.
pub const MAX_TYPE_CHARS: usize = 64;
/// The type a project gets when none is given (the seed's example).
pub const DEFAULT_TYPE: &str = "standard";

/// A stored project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub description: String,
    /// A free-form classifier such as `standard` (the seed's `type`).
    pub kind: String,
    pub status: ProjectStatus,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

impl Project {
    /// The project a valid creation request describes.
    pub fn create(new: NewProject, now: OffsetDateTime) -> Self {
        Self {
            id: ProjectId::new(),
            name: new.name,
            description: new.description,
            kind: new.kind,
            status: ProjectStatus::Active,
            created_at: now,
            updated_at: now,
        }
    }

    /// This project with `update` applied; fields the update leaves out keep their value.
    pub fn updated(mut self, update: ProjectUpdate, now: OffsetDateTime) -> Self {
        if let Some(name) = update.name {
            self.name = name;
        }
        if let Some(description) = update.description {
            self.description = description;
        }
        if let Some(kind) = update.kind {
            self.kind = kind;
        }
        if let Some(status) = update.status {
            self.status = status;
        }
        self.updated_at = now;
        self
    }
}

/// Whether a project is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProjectStatus {
    Active,
    Archived,
}

impl ProjectStatus {
    /// Every status, in the order they are documented.
    pub const ALL: [ProjectStatus; 2] = [ProjectStatus::Active, ProjectStatus::Archived];

    /// The status as it is written on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectStatus::Active => "active",
            ProjectStatus::Archived => "archived",
        }
    }
}

impl fmt::Display for ProjectStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProjectStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("`{s}` is not a project status: expected `active` or `archived`")
            })
    }
}

/// A valid request to create a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProject {
    pub name: String,
    pub description: String,
    pub kind: String,
}

impl NewProject {
    /// Validates every field and reports every problem found.
    pub fn new(
        name: String,
        description: Option<String>,
        kind: Option<String>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_name(&name, &mut errors);
        let description = description.unwrap_or_default();
        check_description(&description, &mut errors);
        let kind = kind.unwrap_or_else(|| DEFAULT_TYPE.to_owned());
        check_kind(&kind, &mut errors);
        errors.into_result(Self {
            name: name.trim().to_owned(),
            description,
            kind,
        })
    }
}

/// A valid partial update of a project: absent fields are left as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProjectUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub kind: Option<String>,
    pub status: Option<ProjectStatus>,
}

impl ProjectUpdate {
    /// Validates every given field and reports every problem found.
    pub fn new(
        name: Option<String>,
        description: Option<String>,
        kind: Option<String>,
        status: Option<String>,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if let Some(name) = &name {
            check_name(name, &mut errors);
        }
        if let Some(description) = &description {
            check_description(description, &mut errors);
        }
        if let Some(kind) = &kind {
            check_kind(kind, &mut errors);
        }
        let status = match status.map(|s| s.parse::<ProjectStatus>()) {
            Some(Ok(status)) => Some(status),
            Some(Err(message)) => {
                errors.push(FieldError::new("status", message));
                None
            }
            None => None,
        };
        errors.into_result(Self {
            name: name.map(|n| n.trim().to_owned()),
            description,
            kind,
            status,
        })
    }
}

/// Which projects a listing returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectFilter {
    /// Only projects with this status.
    pub status: Option<ProjectStatus>,
}

fn check_name(name: &str, errors: &mut ValidationErrors) {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        errors.push(FieldError::new("name", "name must not be empty"));
    } else if trimmed.chars().count() > MAX_NAME_CHARS {
        errors.push(FieldError::new(
            "name",
            format!("name must be at most {MAX_NAME_CHARS} characters"),
        ));
    } else if trimmed.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "name",
            "name must not contain control characters",
        ));
    }
}

fn check_description(description: &str, errors: &mut ValidationErrors) {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        errors.push(FieldError::new(
            "description",
            format!("description must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
}

fn check_kind(kind: &str, errors: &mut ValidationErrors) {
    let valid = !kind.is_empty()
        && kind.len() <= MAX_TYPE_CHARS
        && kind.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        errors.push(FieldError::new(
            "type",
            format!(
                "type `{kind}` is invalid: use 1 to {MAX_TYPE_CHARS} lowercase letters, digits, `_` or `-`, starting with a letter or digit"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_valid_project_gets_defaults() {
        let new = NewProject::new("  My Project ".into(), None, None).unwrap();
        assert_eq!(new.name, "My Project");
        assert_eq!(new.description, "");
        assert_eq!(new.kind, "standard");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = NewProject::new(
            " ".into(),
            Some("x".repeat(MAX_DESCRIPTION_CHARS + 1)),
            Some("Bad Type".into()),
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/name", "/description", "/type"]);
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let project = Project::create(
            NewProject::new("a".into(), Some("d".into()), None).unwrap(),
            now,
        );
        let later = now + time::Duration::seconds(5);
        let update = ProjectUpdate::new(None, None, None, Some("archived".into())).unwrap();
        let updated = project.clone().updated(update, later);
        assert_eq!(updated.name, "a");
        assert_eq!(updated.description, "d");
        assert_eq!(updated.status, ProjectStatus::Archived);
        assert_eq!(updated.created_at, now);
        assert_eq!(updated.updated_at, later);
    }

    #[test]
    fn an_unknown_status_names_the_field() {
        let err = ProjectUpdate::new(None, None, None, Some("gone".into())).unwrap_err();
        assert_eq!(err.0[0].pointer, "/status");
        assert!(err.0[0].message.contains("`gone`"));
    }

    proptest! {
        #[test]
        fn statuses_round_trip(status in prop::sample::select(ProjectStatus::ALL.to_vec())) {
            prop_assert_eq!(status.as_str().parse::<ProjectStatus>(), Ok(status));
        }

        #[test]
        fn names_are_accepted_exactly_when_they_have_visible_text(name in "\\PC{0,250}") {
            let trimmed = name.trim();
            let ok = !trimmed.is_empty() && trimmed.chars().count() <= MAX_NAME_CHARS;
            prop_assert_eq!(NewProject::new(name.clone(), None, None).is_ok(), ok);
        }
    }
}
