//! Startup: retained messages and persistent sessions back from the store.
//!
//! Depends on the broker's shared state (router, registry, quotas, store), the identities of
//! the users file (whose sessions may keep which filters) and the anonymous quotas.

use std::sync::Arc;

use firehose_codec::{Protocol, QoS};

use super::message::{now_ms, Delivery, Message};
use super::quota::granted_expiry;
use super::session::{Owner, Session, Stage};
use super::shared::Shared;
use super::stats;
use super::subscription::SubOptions;
use crate::auth::Identity;
use crate::store::{SessionChanges, StoreError, StoredSubscription};

/// Loads the retained messages into the router, all of them: a quota lowered since they were
/// kept refuses new retained topics until enough are cleared, and forgets none.
pub(super) fn retained(shared: &Shared) -> Result<(), StoreError> {
    for event in shared.store().load_retained()? {
        shared
            .router()
            .retained()
            .set(&Arc::new(Message::from_event(&event)));
    }
    if let Some(full) = shared.router().retained().over_quota() {
        let usage = shared.router().retained().usage();
        tracing::warn!(
            messages = usage.messages,
            bytes = usage.bytes,
            "the stored retained messages exceed the retained quota ({full}): new retained topics are refused until enough are cleared"
        );
    }
    Ok(())
}

/// Re-creates every unexpired persistent session, offline and lagging from its cursor, and
/// forgets the expired ones.
///
/// Each is checked as if its owner connected now: its expiry is at most what the owner would
/// be granted ([`granted_expiry`]: anonymous sessions expire sooner), and its filters must be
/// ones the owner may subscribe to; the others are dropped, logged and deleted from the store
/// before anything is routed. The session of a user no longer in the users file is left in
/// the store and not restored: nobody can resume it, and it comes back (or expires) at the
/// first start whose users file has its user again. Anonymous sessions count in their quotas
/// whatever the limits: stored sessions are all kept.
pub(super) fn sessions(shared: &Arc<Shared>) -> Result<(), StoreError> {
    let now = now_ms();
    let limits = shared.limits();
    let queue_limit = usize::try_from(limits.send_queue).unwrap_or(usize::MAX);
    let (mut restored, mut orphaned) = (0, 0);
    for stored in shared.store().load_sessions()? {
        let (owner, identity) = match &stored.owner {
            None => (Owner::Anonymous, Identity::Anonymous),
            Some(name) => match shared.identity_of(name) {
                Some(identity) => (Owner::User(name.as_str().into()), identity),
                None => {
                    orphaned += 1;
                    continue;
                }
            },
        };
        let state = &stored.state;
        let expiry = granted_expiry(limits, &identity, state.expiry_interval);
        let remaining_secs = match state.disconnected_at_ms {
            _ if expiry == u32::MAX => None,
            // A session that was connected when the broker stopped counts from now.
            None => Some(u64::from(expiry)),
            Some(at) => {
                let ends = at.saturating_add(i64::from(expiry) * 1000);
                if ends <= now {
                    shared.store().delete_session(&stored.client_id);
                    continue;
                }
                Some(u64::try_from((ends - now) / 1000).unwrap_or(0).max(1))
            }
        };
        let session = Arc::new(Session::new(
            stored.client_id.as_str().into(),
            Protocol::V5,
            expiry,
            queue_limit,
            state.cursor,
        ));
        let (allowed, revoked): (Vec<_>, Vec<_>) = stored
            .subscriptions
            .iter()
            .partition(|sub| identity.may_subscribe(&sub.filter));
        {
            let mut session_state = session.lock();
            for sub in &allowed {
                session_state
                    .subscriptions
                    .insert(sub.filter.clone(), options_of(sub));
            }
            for inflight in &state.inflight {
                if inflight.stage == 2 {
                    session_state.delivered_ahead.insert(inflight.event_id);
                    continue;
                }
                let Some(event) = shared.store().get(inflight.event_id)? else {
                    continue; // deleted by retention meanwhile
                };
                let message = Arc::new(Message::from_event(&event));
                let qos = QoS::from_u8(inflight.qos).unwrap_or(QoS::AtLeastOnce);
                let stage = match (qos, inflight.stage) {
                    (QoS::ExactlyOnce, 1) => Stage::AwaitPubComp,
                    (QoS::ExactlyOnce, _) => Stage::AwaitPubRec,
                    _ => Stage::AwaitPubAck,
                };
                session_state.delivered_ahead.insert(inflight.event_id);
                let delivery = Delivery {
                    retain: false,
                    subscription_ids: Vec::new(),
                    from_log: true,
                    qos,
                    message,
                };
                session_state.add_inflight(inflight.packet_id, delivery, stage);
            }
            session_state
                .incoming_qos2
                .extend(state.incoming_qos2.iter().copied());
        }
        if !revoked.is_empty() {
            let filters: Vec<String> = revoked.iter().map(|sub| sub.filter.clone()).collect();
            stats::add(&shared.stats().subscriptions_revoked, filters.len() as u64);
            tracing::warn!(client = ?stored.client_id, owner = %owner, filters = ?filters,
                "stored subscriptions dropped: the users file no longer lets their owner subscribe to them");
            shared.store().update_session(
                SessionChanges {
                    client_id: stored.client_id.clone(),
                    state: None,
                    subscribed: Vec::new(),
                    unsubscribed: filters,
                },
                None,
            );
        }
        for sub in &allowed {
            shared
                .router()
                .subscribe(&session, &owner, &sub.filter, options_of(sub));
        }
        if owner.is_anonymous() {
            shared.quotas().count_subscriptions(allowed.len());
        }
        let address = stored.address.as_deref().and_then(|a| a.parse().ok());
        shared.registry().restore(session.clone(), owner, address);
        if let Some(secs) = remaining_secs {
            shared.schedule_expiry(session, 0, secs);
        }
        restored += 1;
    }
    if restored > 0 {
        tracing::info!(
            sessions = restored,
            "restored persistent sessions from the store"
        );
    }
    if orphaned > 0 {
        tracing::warn!(
            sessions = orphaned,
            "persistent sessions of users no longer in the users file were left in the store, \
             not restored: nobody can resume them until their users are back"
        );
    }
    if shared.registry().over_quota() {
        tracing::warn!(
            sessions = shared.registry().anonymous_sessions(),
            "the stored anonymous persistent sessions exceed limits.max_anonymous_sessions: \
             new ones are refused until enough expire"
        );
    }
    Ok(())
}

/// The options of a stored subscription.
fn options_of(sub: &StoredSubscription) -> SubOptions {
    SubOptions {
        qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
        no_local: sub.no_local,
        retain_as_published: sub.retain_as_published,
        id: sub.subscription_id,
    }
}
