//! The hub framework, and one module per hub.
//!
//! A hub lists its client-callable methods and implements them against a [`Caller`]: bind the arguments,
//! join or leave groups, return a value or refuse with a message. Hubs never see transports, frames or
//! protocols; the session turns their results into Completion messages and error texts.

pub mod admin;
pub mod media;
pub mod notifications;
pub mod spend;
pub mod tasks;
pub mod webhooks;

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::auth::{KeyId, Principal};
use crate::delivery::Scope;
use crate::edge::connection::Connection;
use crate::edge::groups::{GroupKey, Groups};
use crate::edge::Edge;
use crate::events::types::{valid_id, Severity};
use crate::protocol::{HubMessage, Value};

/// What the groups of a connection may cost on average, in bytes ([`group_cost`]): with the count limit,
/// this bounds the memory a connection's groups hold, however long their names.
const GROUP_BYTES_PER_GROUP: usize = 2048;

/// What one joined group costs in memory: its name twice (the caller's list and the group registry)
/// and the entries around them.
fn group_cost(key: &GroupKey) -> usize {
    2 * key.name.len() + 192
}

/// Who may connect to a hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    VirtualKey,
    Admin,
}

/// How an invocation can fail. The session turns each into the text ASP.NET Core would send.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No client-callable method by that name.
    #[error("Method does not exist.")]
    MethodNotFound,
    /// Arguments of the wrong number or types; the detail goes to the log only.
    #[error("{0}")]
    Binding(String),
    /// The hub refused, like a thrown HubException: the client sees this message.
    #[error("{0}")]
    Refused(String),
    /// Anything else; the client sees a generic message, the log the detail.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl HubError {
    pub fn refused(message: impl Into<String>) -> Self {
        HubError::Refused(message.into())
    }
}

/// What a method returns: `None` for void.
pub type HubResult = Result<Option<Value>, HubError>;

/// Invocation arguments as received, bound to typed parameters on demand.
#[derive(Debug)]
pub struct Arguments(pub Vec<Value>);

impl Arguments {
    /// Binds the arguments to a tuple of parameter types: `let (task_id,): (String,) = args.bind()?;`.
    /// Wrong counts and wrong types are binding errors, as in ASP.NET Core.
    pub fn bind<T: DeserializeOwned>(self) -> Result<T, HubError> {
        let count = self.0.len();
        serde_json::from_value(Value::Array(self.0))
            .map_err(|e| HubError::Binding(format!("{count} argument(s) do not bind: {e}")))
    }

    /// For methods without parameters.
    pub fn none(self) -> Result<(), HubError> {
        match self.0.len() {
            0 => Ok(()),
            count => Err(HubError::Binding(format!(
                "Invocation provides {count} argument(s) but target expects 0."
            ))),
        }
    }
}

/// The calling connection, as a hub method sees it.
pub struct Caller {
    principal: Principal,
    connection: Arc<Connection>,
    edge: Arc<Edge>,
    /// The groups joined. A list, not a set: a connection joins one or two, and a set's smallest table
    /// costs every connection some 250 bytes.
    joined: Vec<GroupKey>,
    /// How many of the joined groups the connection got on connect (`vkey-{id}`, `all`, `admin`): they
    /// are not subscriptions, and do not count against `limits.groups_per_connection`.
    automatic: u8,
    /// The hub's own per-connection state (preferences, say); one type per hub.
    state: Option<Box<dyn Any + Send>>,
}

impl Caller {
    pub fn new(principal: Principal, connection: Arc<Connection>, edge: Arc<Edge>) -> Self {
        Self { principal, connection, edge, joined: Vec::new(), automatic: 0, state: None }
    }

    /// Runs the hub's connect hook: the groups it joins are the connection's own, not subscriptions.
    pub fn connect(&mut self, hub: &dyn Hub) -> Result<(), HubError> {
        hub.on_connected(self)?;
        self.automatic = u8::try_from(self.joined.len()).unwrap_or(u8::MAX);
        Ok(())
    }

    /// This connection's state of type `T`, created with `T::default()` on first use.
    pub fn state<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.state.as_ref().is_some_and(|state| state.is::<T>()) {
            self.state = Some(Box::new(T::default()));
        }
        self.state.as_mut().and_then(|state| state.downcast_mut()).expect("state of type T was just ensured")
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The edge this connection lives on, for shared state such as statistics.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// The virtual key of a tenant connection.
    pub fn key_id(&self) -> Option<&KeyId> {
        match &self.connection.scope {
            Scope::Tenant(key) => Some(key),
            _ => None,
        }
    }

    pub fn connection_id(&self) -> &str {
        &self.connection.public_id
    }

    fn group_key(&self, scope: Scope, name: &str) -> GroupKey {
        GroupKey { hub: self.connection.hub, scope, name: name.into() }
    }

    /// Joins every group of `keys` not joined yet, or none of them when that would take the connection
    /// past `limits.groups_per_connection` or its bytes of group names.
    fn join_keys(&mut self, keys: Vec<GroupKey>) -> Result<(), HubError> {
        let mut new: Vec<GroupKey> = Vec::new();
        for key in keys {
            if !self.joined.contains(&key) && !new.contains(&key) {
                new.push(key);
            }
        }
        let limit = self.edge.config.limits.groups_per_connection + usize::from(self.automatic);
        let cost = |keys: &[GroupKey]| keys.iter().map(group_cost).sum::<usize>();
        if self.joined.len() + new.len() > limit
            || cost(&self.joined) + cost(&new) > limit.saturating_mul(GROUP_BYTES_PER_GROUP)
        {
            tracing::info!(target: "audit", hub = self.connection.hub, connection = %self.connection.public_id, joined = self.joined.len(), "refused: too many subscriptions");
            return Err(HubError::refused("Too many subscriptions"));
        }
        for key in new {
            self.groups().join(key.clone(), &self.connection);
            tracing::info!(target: "audit", hub = key.hub, connection = %self.connection.public_id, group = %key.name, "subscribed");
            // Grown one slot at a time while short, so that one group costs one slot, not four.
            if self.joined.len() < 4 {
                self.joined.reserve_exact(1);
            }
            self.joined.push(key);
        }
        Ok(())
    }

    fn groups(&self) -> &Groups {
        &self.edge.groups
    }

    /// Joins a group of this connection's own scope. Joining twice is harmless; a group past the
    /// connection's limits is refused with `Too many subscriptions`.
    pub fn join(&mut self, name: &str) -> Result<(), HubError> {
        self.join_keys(vec![self.group_key(self.connection.scope.clone(), name)])
    }

    /// Joins several groups of this connection's own scope, all or none.
    pub fn join_all(&mut self, names: &[String]) -> Result<(), HubError> {
        let keys = names.iter().map(|name| self.group_key(self.connection.scope.clone(), name)).collect();
        self.join_keys(keys)
    }

    /// Joins a hub-wide group that carries events for every connection of the hub (`all`).
    pub fn join_everyone(&mut self, name: &str) -> Result<(), HubError> {
        self.join_keys(vec![self.group_key(Scope::Everyone, name)])
    }

    /// Leaves a group; leaving one never joined is harmless, as in ASP.NET Core.
    pub fn leave(&mut self, name: &str) {
        let key = self.group_key(self.connection.scope.clone(), name);
        if let Some(at) = self.joined.iter().position(|joined| *joined == key) {
            self.joined.swap_remove(at);
            self.groups().leave(&key, self.connection.id);
            tracing::info!(target: "audit", hub = key.hub, connection = %self.connection.public_id, group = %key.name, "unsubscribed");
        }
    }

    pub fn is_member(&self, name: &str) -> bool {
        self.joined.contains(&self.group_key(self.connection.scope.clone(), name))
    }

    /// Sets which notification events reach this connection.
    pub fn set_preferences(&self, enabled_events: u16, minimum: Severity) {
        self.connection.set_preferences(enabled_events, minimum);
    }

    /// Sends an event to this connection only.
    pub fn send(&self, target: &str, arguments: Vec<Value>) {
        self.connection.send_message(&HubMessage::event(target, arguments));
    }

    /// Leaves every group; the session calls this when the connection ends.
    pub fn leave_all(&mut self) {
        for key in std::mem::take(&mut self.joined) {
            self.groups().leave(&key, self.connection.id);
        }
    }
}

/// One hub. Implementations are short: the method list, the connect hook, and the methods.
pub trait Hub: Send + Sync + 'static {
    /// The hub's name of the contract (`tasks`), also its path under `/hubs/`.
    fn name(&self) -> &'static str;

    fn audience(&self) -> Audience;

    /// Client-callable methods, spelled as clients see them; calls match case-insensitively.
    fn methods(&self) -> &'static [&'static str];

    /// The scopes whose deliveries a connection of this hub needs: its own, and for hubs with
    /// hub-wide events (`all`) everyone's.
    fn scopes(&self, own: &Scope) -> Vec<Scope> {
        vec![own.clone()]
    }

    /// Runs once the handshake is done. By default every tenant connection joins `vkey-{id}` and every
    /// admin connection joins `admin`.
    fn on_connected(&self, caller: &mut Caller) -> Result<(), HubError> {
        match caller.key_id().map(|key| format!("vkey-{key}")) {
            Some(group) => caller.join(&group),
            None => caller.join("admin"),
        }
    }

    /// Runs one method; `method` is one of [`Hub::methods`], in that spelling.
    fn invoke<'a>(
        &'a self,
        caller: &'a mut Caller,
        method: &'static str,
        args: Arguments,
    ) -> BoxFuture<'a, HubResult>;

    /// The canonical spelling of a client's method name, if the hub has such a method.
    fn resolve(&self, target: &str) -> Option<&'static str> {
        self.methods().iter().copied().find(|m| m.eq_ignore_ascii_case(target))
    }

    fn path(&self) -> String {
        format!("/hubs/{}", self.name())
    }
}

/// Every hub this server serves.
pub fn all() -> Vec<Arc<dyn Hub>> {
    vec![
        Arc::new(tasks::TasksHub),
        Arc::new(media::VIDEO_GENERATION),
        Arc::new(media::IMAGE_GENERATION),
        Arc::new(notifications::NotificationsHub),
        Arc::new(spend::SpendHub),
        Arc::new(webhooks::WebhooksHub),
        Arc::new(admin::AdminHub),
    ]
}

/// Binds a single id argument and validates it, refusing with `refusal` (`Invalid task ID`) otherwise.
pub fn bind_id(args: Arguments, refusal: &str) -> Result<String, HubError> {
    let (id,): (String,) = args.bind()?;
    if valid_id(&id) {
        Ok(id)
    } else {
        Err(HubError::refused(refusal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn binding_checks_count_and_types() {
        let (s, n): (String, u8) = Arguments(vec![json!("a"), json!(5)]).bind().unwrap();
        assert_eq!((s.as_str(), n), ("a", 5));
        assert!(matches!(Arguments(vec![]).bind::<(String,)>(), Err(HubError::Binding(_))));
        assert!(matches!(
            Arguments(vec![json!("a"), json!("b")]).bind::<(String,)>(),
            Err(HubError::Binding(_))
        ));
        assert!(matches!(Arguments(vec![json!(1)]).bind::<(String,)>(), Err(HubError::Binding(_))));
    }

    fn admin_caller(groups_per_connection: usize) -> Caller {
        let (connection, _queue) = Connection::new(1, "c".into(), "tasks", Scope::Admin, 1024);
        let mut config = crate::config::Config {
            auth: crate::config::AuthConfig { jwt_secret: Some("s".into()), ..Default::default() },
            ..Default::default()
        };
        config.limits.groups_per_connection = groups_per_connection;
        let auth = crate::auth::Authenticator::new(&config.auth).unwrap();
        let edge = Arc::new(Edge::new(config, auth, all()));
        Caller::new(Principal::Admin { expires_at: None }, Arc::new(connection), edge)
    }

    fn too_many(result: Result<(), HubError>) -> bool {
        matches!(result, Err(HubError::Refused(message)) if message == "Too many subscriptions")
    }

    #[test]
    fn groups_per_connection_are_capped_in_count_and_bytes() {
        let mut caller = admin_caller(100);
        caller.connect(&admin::AdminHub).unwrap();
        for n in 0..100 {
            caller.join(&format!("task-{n}")).expect("the admin group joined on connect is not counted");
        }
        assert!(too_many(caller.join("task-100")));
        caller.join("task-7").expect("a group already joined costs nothing");
        caller.leave("task-7");
        caller.join("task-100").expect("leaving frees room");
        assert_eq!(caller.edge().groups.group_count(), 101);

        let mut caller = admin_caller(100);
        let first: Vec<String> = (0..60).map(|n| format!("a-{n}")).collect();
        let second: Vec<String> = (30..90).map(|n| format!("a-{n}")).collect();
        let third: Vec<String> = (90..120).map(|n| format!("a-{n}")).collect();
        caller.join_all(&first).unwrap();
        caller.join_all(&second).expect("30 of them were joined already: 90 in all");
        assert!(too_many(caller.join_all(&third)), "all or none");
        assert_eq!(caller.joined.len(), 90);

        let mut caller = admin_caller(100);
        let long: Vec<String> = (0..50).map(|n| format!("webhook-{n}-{}", "x".repeat(2000))).collect();
        assert!(
            too_many(caller.join_all(&long)),
            "50 names of 2 KB are past the bytes a connection may hold"
        );
    }

    #[test]
    fn per_connection_state_persists_between_calls() {
        let mut caller = admin_caller(100);
        caller.state::<Vec<String>>().push("first".into());
        caller.state::<Vec<String>>().push("second".into());
        assert_eq!(caller.state::<Vec<String>>().len(), 2);
    }

    #[test]
    fn ids_follow_the_contract_rule() {
        assert!(valid_id("task:abc_1-2"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(129)));
        assert!(!valid_id("a b"));
        assert!(!valid_id("a/b"));
        assert!(
            matches!(bind_id(Arguments(vec![json!("x y")]), "Invalid task ID"), Err(HubError::Refused(m)) if m == "Invalid task ID")
        );
    }
}
