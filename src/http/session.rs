//! The dashboard's sessions: a token exchanged once (`POST /ui/login`) for a cookie the APIs
//! accept in its place.
//!
//! A browser cannot put an `Authorization` header on an `EventSource` or keep a token out of
//! reach of the page's scripts, so the dashboard trades the token for a session: a random id in
//! an `HttpOnly; SameSite=Strict` cookie (`Secure` too over TLS), valid for [`SESSION_TTL`]
//! with the role of the token it was made from. The id is kept only as its SHA-256 digest, as
//! tokens are.
//!
//! A cookie rides along on any request the browser makes to the manager's host, whatever the
//! port, so it is not enough by itself: every request made with one must also carry the
//! session's key in [`CSRF_HEADER`] (see [`authenticate`]). The key is given once, in the
//! sign-in's answer, and the page keeps it in its origin's storage. A page of another origin
//! (another site, or a container's web server on another port of the same host, which does
//! receive the cookie) can neither read the key nor set a custom header on a request to the
//! manager without its consent (CORS), which it never gives. `SameSite=Strict` is a second,
//! independent guard against cross-site requests.
//!
//! Sessions live in the manager's memory: a restart signs everyone out, and the page asks for
//! the token again. At most [`MAX_SESSIONS`] exist; a new one beyond that pushes out the one
//! closest to expiring among those of its role or a lesser one, so signing in again and again
//! with a read token cannot sign out the holders of write tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::auth::{Role, generate};

/// The session cookie's name.
pub const COOKIE: &str = "cube_session";
/// The header a cookie-authenticated write carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "X-Cube-CSRF";
/// How long a session lasts from the login that made it.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once.
pub const MAX_SESSIONS: usize = 10_000;

/// A session as a request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub role: Role,
    /// What [`CSRF_HEADER`] must hold for a write.
    pub csrf: String,
    pub expires: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token, compared in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Every live session, by the digest of its id.
#[derive(Debug, Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
    /// Mark cookies `Secure`: the API is served over TLS.
    pub secure: bool,
}

impl Sessions {
    pub fn new(secure: bool) -> Sessions {
        Sessions {
            live: Mutex::default(),
            secure,
        }
    }

    /// A new session with `role` at `now`: its id (for the cookie) and the session; `None` when
    /// every place is taken by sessions of a greater role.
    pub fn open(&self, role: Role, now: Instant) -> Option<(String, Session)> {
        let id = generate();
        let session = Session {
            role,
            csrf: generate(),
            expires: now + SESSION_TTL,
        };
        let mut live = self.lock();
        live.retain(|_, s| s.expires > now);
        if live.len() >= MAX_SESSIONS {
            let soonest = live
                .iter()
                .filter(|(_, s)| s.role <= role)
                .min_by_key(|(_, s)| s.expires)
                .map(|(key, _)| *key)?;
            live.remove(&soonest);
        }
        live.insert(digest(&id), session.clone());
        Some((id, session))
    }

    /// The live session whose id is `id`, if any.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let key = digest(id);
        let mut live = self.lock();
        match live.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                live.remove(&key);
                None
            }
            None => None,
        }
    }

    /// End the session whose id is `id`; whether there was one.
    pub fn close(&self, id: &str) -> bool {
        self.lock().remove(&digest(id)).is_some()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock leaves only a map of sessions behind: keep using it.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The session a request stands for: the one its cookie (`id`) names, when `key` (the
/// [`CSRF_HEADER`]'s value) is that session's. Otherwise, what is wrong.
pub fn authenticate(
    sessions: &Sessions,
    id: &str,
    key: Option<&actix_web::http::header::HeaderValue>,
    now: Instant,
) -> Result<Session, String> {
    let session = sessions.get(id, now).ok_or_else(|| {
        "the dashboard session has expired or is unknown (the manager may have restarted); sign in again".to_string()
    })?;
    let key = key.and_then(|v| v.to_str().ok());
    if !key.is_some_and(|k| session.csrf_matches(k)) {
        return Err(format!(
            "a dashboard session counts only with its key in the {CSRF_HEADER} header, which the sign-in gave the page; sign in again"
        ));
    }
    Ok(session)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_until_it_expires_or_closes() {
        let sessions = Sessions::new(false);
        let t0 = Instant::now();
        let (id, opened) = sessions.open(Role::Read, t0).expect("room");
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.get(&id, t0), Some(opened.clone()));
        assert_eq!(sessions.get("not-a-session", t0), None);
        assert!(opened.csrf_matches(&opened.csrf));
        assert!(!opened.csrf_matches(&opened.csrf[1..]));
        assert!(!opened.csrf_matches(""));
        assert_eq!(sessions.get(&id, t0 + SESSION_TTL), None, "expired");
        assert!(
            sessions.is_empty(),
            "an expired session is dropped when seen"
        );
        let (id, _) = sessions.open(Role::Write, t0).expect("room");
        assert!(sessions.close(&id));
        assert!(!sessions.close(&id));
        assert_eq!(sessions.get(&id, t0), None);
    }

    #[test]
    fn sessions_are_bounded_by_pushing_out_the_soonest_to_expire_of_a_role_no_greater() {
        let sessions = Sessions::new(false);
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_millis(i);
        let (writer, _) = sessions.open(Role::Write, at(0)).expect("room");
        let (first_reader, _) = sessions.open(Role::Read, at(1)).expect("room");
        for i in 2..MAX_SESSIONS as u64 {
            sessions.open(Role::Read, at(i)).expect("room");
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // A read session pushes out the oldest read session, never the older write one.
        let (reader, _) = sessions.open(Role::Read, at(20_000)).expect("room");
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(
            sessions.get(&first_reader, t0),
            None,
            "the oldest reader went"
        );
        assert!(sessions.get(&writer, t0).is_some(), "the writer stays");
        assert!(sessions.get(&reader, t0).is_some());
        // A write session may push out any: here the writer, the soonest to expire.
        let (second_writer, _) = sessions.open(Role::Write, at(30_000)).expect("room");
        assert_eq!(sessions.get(&writer, t0), None);
        assert!(sessions.get(&second_writer, t0).is_some());
    }

    #[test]
    fn a_read_session_finds_no_room_among_write_sessions() {
        let sessions = Sessions::new(false);
        let t0 = Instant::now();
        for i in 0..MAX_SESSIONS as u64 {
            sessions
                .open(Role::Write, t0 + Duration::from_millis(i))
                .expect("room");
        }
        assert!(sessions.open(Role::Read, t0).is_none());
        assert_eq!(sessions.len(), MAX_SESSIONS);
    }
}
