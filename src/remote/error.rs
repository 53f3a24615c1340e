//! Remote failures and their classification: retryable, permanent, and the export-only fall-through class.
use std::time::Duration;

/// One failed exchange with the relayfile server. The message never contains the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    /// The server answered with a non-2xx status.
    #[error("{op}: HTTP {status} {code}: {message} (correlation id {correlation_id})")]
    Http {
        op: String,
        status: u16,
        code: String,
        message: String,
        correlation_id: String,
        retry_after: Option<Duration>,
    },
    /// Connecting, sending or reading failed (including per-read idle timeouts).
    #[error("{op}: transport error{}: {detail} (correlation id {correlation_id})", if *.after_status { " after the response started" } else { "" })]
    Transport {
        op: String,
        detail: String,
        correlation_id: String,
        /// True when the failure happened after a 2xx status arrived (a body cut short).
        after_status: bool,
    },
    /// The server answered 2xx with content that cannot be used (malformed JSON, bad base64, hash mismatch).
    #[error("{op}: bad data: {detail} (correlation id {correlation_id})")]
    BadData {
        op: String,
        detail: String,
        correlation_id: String,
    },
}

impl RemoteError {
    /// Transport failures, timeouts, 429 and 5xx are worth retrying; everything else is permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            RemoteError::Http { status, .. } => *status == 429 || *status >= 500,
            RemoteError::Transport { after_status, .. } => !after_status,
            RemoteError::BadData { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            RemoteError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            RemoteError::Http { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RemoteError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// 401: the token is wrong or expired. Never retried.
    pub fn is_auth(&self) -> bool {
        self.status() == Some(401)
    }

    /// The export-only class: failures after which the bootstrap falls through to the tree pull.
    /// 429 `workspace_busy`, 404/413/400 (unsupported or too large), and a broken or malformed body.
    /// Other 429s, 5xx and transport errors before the status do not fall through.
    pub fn export_falls_through(&self) -> bool {
        match self {
            RemoteError::Http { status, code, .. } => {
                (*status == 429 && code == "workspace_busy") || matches!(status, 400 | 404 | 413)
            }
            RemoteError::Transport { after_status, .. } => *after_status,
            RemoteError::BadData { .. } => true,
        }
    }

    /// A per-file failure that should quarantine that file rather than stop the run:
    /// any HTTP status except 401 and 429, and bad data.
    pub fn is_per_file(&self) -> bool {
        match self {
            RemoteError::Http { status, .. } => *status != 401 && *status != 429,
            RemoteError::BadData { .. } => true,
            RemoteError::Transport { .. } => false,
        }
    }

    /// What the user can do about it, for the final diagnosis.
    pub fn hint(&self) -> &'static str {
        match self {
            RemoteError::Http { status: 401, .. } => {
                "check the token (--token-file or RELAYFILE_TOKEN); it may be expired"
            }
            RemoteError::Http { status: 403, .. } => {
                "the token lacks access to this workspace or path (check --workspace and the token's scopes)"
            }
            RemoteError::Http { status: 429, .. } => {
                "the server is throttling; run again later or lower --read-concurrency"
            }
            RemoteError::Http { status, .. } if *status >= 500 => {
                "the server is failing; give the correlation id to its operators and retry later"
            }
            RemoteError::Transport { .. } => {
                "check --base-url and the network; raise --read-timeout for slow servers"
            }
            _ => "see the message above",
        }
    }
}

/// Parse a `Retry-After` header: integer seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs));
        }
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16, code: &str) -> RemoteError {
        RemoteError::Http {
            op: "export".into(),
            status,
            code: code.into(),
            message: String::new(),
            correlation_id: "c".into(),
            retry_after: None,
        }
    }

    #[test]
    fn classification() {
        assert!(http(429, "rate_limited").is_retryable());
        assert!(http(503, "unavailable").is_retryable());
        assert!(!http(404, "not_found").is_retryable());
        assert!(!http(401, "unauthorized").is_retryable());
        assert!(http(429, "workspace_busy").export_falls_through());
        assert!(!http(429, "rate_limited").export_falls_through());
        assert!(!http(429, "queue_full").export_falls_through());
        assert!(!http(500, "export_error").export_falls_through());
        for s in [400, 404, 413] {
            assert!(http(s, "x").export_falls_through());
        }
        assert!(http(403, "forbidden").is_per_file());
        assert!(!http(401, "unauthorized").is_per_file());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let future = std::time::SystemTime::now() + Duration::from_secs(30);
        let d = parse_retry_after(&httpdate::fmt_http_date(future)).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
