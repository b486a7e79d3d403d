//! Group membership and fan-out.
//!
//! A group's identity is (hub, scope, name), and the scope of a tenant connection is its virtual key. Hub
//! code only ever names groups; the scope comes from the authenticated connection. So `task-abc` of key 7
//! and `task-abc` of key 9 are different groups, and no event addressed to one key can reach another key's
//! connection: there is no way to even name the other key's group.
//!
//! The registry is sharded by group so that membership changes on one group do not stall fan-out to
//! others. Fan-out takes read locks only, once per event and shard, never per connection.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::connection::{Connection, ConnectionId};
use crate::delivery::{EventFilter, Scope};
use crate::protocol::EncodedMessage;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub hub: &'static str,
    pub scope: Scope,
    pub name: Box<str>,
}

type Members = HashMap<ConnectionId, Arc<Connection>>;

const SHARDS: usize = 32;

pub struct Groups {
    shards: Vec<RwLock<HashMap<GroupKey, Members>>>,
}

impl Default for Groups {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| RwLock::default()).collect() }
    }
}

fn shard_of(key: &GroupKey) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

impl Groups {
    fn write(&self, key: &GroupKey) -> std::sync::RwLockWriteGuard<'_, HashMap<GroupKey, Members>> {
        // A poisoned lock only means another thread panicked mid-update of plain maps; the maps are
        // still consistent enough to use, and refusing every later delivery would be worse.
        self.shards[shard_of(key)].write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, HashMap<GroupKey, Members>> {
        self.shards[shard].read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a member; returns true when the group was empty before (the edge starts listening for it).
    pub fn join(&self, key: GroupKey, connection: &Arc<Connection>) -> bool {
        let mut shard = self.write(&key);
        let members = shard.entry(key).or_default();
        let first = members.is_empty();
        members.insert(connection.id, Arc::clone(connection));
        first
    }

    /// Removes a member; returns true when the group is now empty.
    pub fn leave(&self, key: &GroupKey, connection: ConnectionId) -> bool {
        let mut shard = self.write(key);
        let Some(members) = shard.get_mut(key) else { return false };
        if members.remove(&connection).is_none() {
            return false;
        }
        if members.is_empty() {
            shard.remove(key);
            return true;
        }
        false
    }

    pub fn member_count(&self, key: &GroupKey) -> usize {
        self.read(shard_of(key)).get(key).map_or(0, HashMap::len)
    }

    pub fn group_count(&self) -> usize {
        (0..SHARDS).map(|shard| self.read(shard).len()).sum()
    }

    /// Queues `message` once to every connection in any of `keys`, and returns how many got it.
    ///
    /// A connection in several of the groups gets one copy: a member of a later group is skipped when an
    /// earlier group has it too, a lookup in maps already locked. The bytes are encoded at most once per
    /// protocol and shared by every recipient.
    pub fn deliver(&self, keys: &[GroupKey], filter: Option<EventFilter>, message: &EncodedMessage) -> usize {
        let mut shard_ids: Vec<usize> = keys.iter().map(shard_of).collect();
        shard_ids.sort_unstable();
        shard_ids.dedup();
        // Locks are taken in shard order, read-only, and held only for the loop below.
        let guards: Vec<(usize, RwLockReadGuard<'_, _>)> =
            shard_ids.into_iter().map(|shard| (shard, self.read(shard))).collect();
        let groups: Vec<Option<&Members>> = keys
            .iter()
            .map(|key| {
                let shard = shard_of(key);
                guards.iter().find(|(id, _)| *id == shard).and_then(|(_, guard)| guard.get(key))
            })
            .collect();

        let mut delivered = 0;
        for (index, members) in groups.iter().enumerate() {
            let Some(members) = members else { continue };
            let earlier = &groups[..index];
            for (id, connection) in members.iter() {
                if earlier.iter().flatten().any(|group| group.contains_key(id)) {
                    continue;
                }
                if filter.is_some_and(|filter| !connection.accepts(filter)) {
                    continue;
                }
                let Some(protocol) = connection.protocol() else { continue };
                if connection.send(message.bytes(protocol).clone()) {
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::KeyId;
    use crate::edge::connection::{Outbound, OutboundReceiver};
    use crate::protocol::{HubMessage, Protocol};

    fn tenant(id: &str) -> Scope {
        Scope::Tenant(KeyId::parse(id).unwrap())
    }

    fn key(scope: &Scope, name: &str) -> GroupKey {
        GroupKey { hub: "tasks", scope: scope.clone(), name: name.into() }
    }

    fn connection(id: u64, scope: Scope, protocol: Protocol) -> (Arc<Connection>, OutboundReceiver) {
        let (connection, receiver) = Connection::new(id, format!("c{id}").into(), "tasks", scope, 1 << 20);
        connection.set_protocol(protocol);
        (Arc::new(connection), receiver)
    }

    fn frames(receiver: &mut OutboundReceiver) -> Vec<bytes::Bytes> {
        std::iter::from_fn(|| match receiver.try_recv() {
            Ok(Outbound::Frame(frame)) => Some(frame),
            _ => None,
        })
        .collect()
    }

    #[test]
    fn same_name_in_two_tenants_is_two_groups() {
        let groups = Groups::default();
        let (seven, mut seven_rx) = connection(1, tenant("7"), Protocol::Json);
        let (nine, mut nine_rx) = connection(2, tenant("9"), Protocol::Json);
        groups.join(key(&tenant("7"), "task-abc"), &seven);
        groups.join(key(&tenant("9"), "task-abc"), &nine);
        let message = EncodedMessage::new(HubMessage::event("TaskProgress", vec![]));
        assert_eq!(groups.deliver(&[key(&tenant("7"), "task-abc")], None, &message), 1);
        assert_eq!(frames(&mut seven_rx).len(), 1);
        assert!(frames(&mut nine_rx).is_empty());
    }

    #[test]
    fn a_member_of_several_target_groups_gets_one_copy() {
        let groups = Groups::default();
        let scope = tenant("7");
        let (both, mut both_rx) = connection(1, scope.clone(), Protocol::Json);
        let (only_type, mut type_rx) = connection(2, scope.clone(), Protocol::MessagePack);
        groups.join(key(&scope, "task-abc"), &both);
        groups.join(key(&scope, "task-type-video"), &both);
        groups.join(key(&scope, "task-type-video"), &only_type);
        let message = EncodedMessage::new(HubMessage::event("TaskProgress", vec![]));
        let targets = [key(&scope, "task-abc"), key(&scope, "task-type-video")];
        assert_eq!(groups.deliver(&targets, None, &message), 2);
        assert_eq!(frames(&mut both_rx), vec![message.bytes(Protocol::Json).clone()]);
        assert_eq!(frames(&mut type_rx), vec![message.bytes(Protocol::MessagePack).clone()]);
    }

    #[test]
    fn join_and_leave_report_first_and_last_member() {
        let groups = Groups::default();
        let scope = tenant("7");
        let (a, _a_rx) = connection(1, scope.clone(), Protocol::Json);
        let (b, _b_rx) = connection(2, scope.clone(), Protocol::Json);
        assert!(groups.join(key(&scope, "g"), &a));
        assert!(!groups.join(key(&scope, "g"), &b));
        assert!(!groups.leave(&key(&scope, "g"), a.id));
        assert!(!groups.leave(&key(&scope, "g"), a.id), "leaving twice changes nothing");
        assert!(groups.leave(&key(&scope, "g"), b.id));
        assert_eq!(groups.group_count(), 0);
    }
}
