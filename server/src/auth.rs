//! Bearer tokens. The admin token guards every admin endpoint (gRPC and
//! HTTP); the optional data-plane token guards lookups and pushes (the
//! admin token is accepted there too); `/metrics` takes either token
//! unless `auth.public_metrics` opens it. Tokens are compared in constant
//! time.
//!
//! gRPC calls are authorized by [`GrpcAuthLayer`](crate::grpc::auth::GrpcAuthLayer), before tonic decodes the
//! message: an anonymous client must not be able to make the server decode
//! (and allocate for) a message up to `limits.max_message_bytes`.

use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};

/// Which token an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Lookup, push, train.
    Data,
    /// Table, feature and checkpoint management, stats, explain.
    Admin,
    /// `/metrics`: table names and sizes.
    Metrics,
}

/// The configured tokens; `None` leaves that role open.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub admin: Option<String>,
    pub data: Option<String>,
    /// `/metrics` is open even when tokens are set.
    pub public_metrics: bool,
}

fn matches(presented: &[u8], expected: &str) -> bool {
    presented.ct_eq(expected.as_bytes()).into()
}

impl Tokens {
    /// Checks an `authorization` header value for `role`.
    pub fn authorize(&self, role: Role, header: Option<&[u8]>) -> Result<(), ApiError> {
        let accepted: Vec<&str> = match role {
            Role::Admin => self.admin.iter().map(String::as_str).collect(),
            Role::Data => match &self.data {
                None => Vec::new(),
                Some(data) => std::iter::once(data.as_str())
                    .chain(self.admin.as_deref())
                    .collect(),
            },
            Role::Metrics if self.public_metrics => Vec::new(),
            Role::Metrics => self
                .admin
                .iter()
                .chain(&self.data)
                .map(String::as_str)
                .collect(),
        };
        if accepted.is_empty() {
            return Ok(());
        }
        let what = match role {
            Role::Admin => "the admin token",
            Role::Data => "the data-plane (or admin) token",
            Role::Metrics => "a token (or auth.public_metrics = true)",
        };
        let Some(header) = header else {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                format!("missing `authorization: Bearer <token>`; this endpoint needs {what}"),
            ));
        };
        let token = header.strip_prefix(b"Bearer ").ok_or_else(|| {
            ApiError::new(
                ErrorKind::Unauthenticated,
                "the authorization header must be `Bearer <token>`",
            )
        })?;
        // Check every candidate, so timing does not tell which one matched.
        let ok = accepted
            .iter()
            .fold(false, |ok, expected| ok | matches(token, expected));
        if ok {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Unauthenticated,
                format!("wrong token; this endpoint needs {what}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_accept_exactly_their_tokens() {
        let tokens = Tokens {
            admin: Some("adm".into()),
            data: Some("dat".into()),
            public_metrics: false,
        };
        let ok = |role, h: &str| tokens.authorize(role, Some(h.as_bytes())).is_ok();
        assert!(ok(Role::Admin, "Bearer adm"));
        assert!(!ok(Role::Admin, "Bearer dat"));
        assert!(ok(Role::Data, "Bearer dat"));
        assert!(ok(Role::Data, "Bearer adm"));
        assert!(!ok(Role::Data, "Bearer da"));
        assert!(!ok(Role::Data, "dat"));
        assert!(ok(Role::Metrics, "Bearer adm") && ok(Role::Metrics, "Bearer dat"));
        assert!(!ok(Role::Metrics, "Bearer x"));
        let missing = tokens.authorize(Role::Data, None).unwrap_err();
        assert_eq!(missing.kind, ErrorKind::Unauthenticated);
        assert!(missing.message.contains("missing"), "{missing}");
    }

    #[test]
    fn unset_tokens_leave_roles_open() {
        let tokens = Tokens {
            admin: Some("adm".into()),
            data: None,
            public_metrics: true,
        };
        assert!(tokens.authorize(Role::Data, None).is_ok());
        assert!(tokens.authorize(Role::Admin, None).is_err());
        assert!(tokens.authorize(Role::Metrics, None).is_ok());
        assert!(Tokens::default().authorize(Role::Admin, None).is_ok());
    }
}
