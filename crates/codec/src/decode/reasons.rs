//! Which reason codes each MQTT 5 packet may carry (the tables of sections 3.2.2.2 to 3.15.2.1),
//! and the check that a received code is one of them.
//!
//! Depends on `reason` of this crate and the decoder's `reader`.

use super::reader::Reader;
use super::DecodeError;
use crate::reason::ReasonCode;

/// The reason code for `code` if the packet may carry it.
pub(super) fn reason_in(
    r: &Reader,
    code: u8,
    allowed: &[ReasonCode],
) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::from_u8(code) {
        Some(reason) if allowed.contains(&reason) => Ok(reason),
        Some(reason) => Err(r.malformed(format!(
            "reason code {code:#04x} ({reason:?}) is not allowed in {}",
            r.packet
        ))),
        None => Err(r.malformed(format!(
            "expected a reason code, got undefined value {code:#04x}"
        ))),
    }
}

use ReasonCode as R;

/// Reason codes each MQTT 5 packet may carry (the tables of sections 3.2.2.2 to 3.15.2.1).
pub(super) const CONNACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::UnsupportedProtocolVersion,
    R::ClientIdentifierNotValid,
    R::BadUserNameOrPassword,
    R::NotAuthorized,
    R::ServerUnavailable,
    R::ServerBusy,
    R::Banned,
    R::BadAuthenticationMethod,
    R::TopicNameInvalid,
    R::PacketTooLarge,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::ConnectionRateExceeded,
];
pub(super) const PUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoMatchingSubscribers,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicNameInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::PayloadFormatInvalid,
];
pub(super) const PUBREL_REASONS: &[ReasonCode] = &[R::Success, R::PacketIdentifierNotFound];
pub(super) const SUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::GrantedQoS1,
    R::GrantedQoS2,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
    R::QuotaExceeded,
    R::SharedSubscriptionsNotSupported,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
pub(super) const UNSUBACK_REASONS: &[ReasonCode] = &[
    R::Success,
    R::NoSubscriptionExisted,
    R::UnspecifiedError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::TopicFilterInvalid,
    R::PacketIdentifierInUse,
];
pub(super) const DISCONNECT_REASONS: &[ReasonCode] = &[
    R::Success,
    R::DisconnectWithWill,
    R::UnspecifiedError,
    R::MalformedPacket,
    R::ProtocolError,
    R::ImplementationSpecificError,
    R::NotAuthorized,
    R::ServerBusy,
    R::ServerShuttingDown,
    R::KeepAliveTimeout,
    R::SessionTakenOver,
    R::TopicFilterInvalid,
    R::TopicNameInvalid,
    R::ReceiveMaximumExceeded,
    R::TopicAliasInvalid,
    R::PacketTooLarge,
    R::MessageRateTooHigh,
    R::QuotaExceeded,
    R::AdministrativeAction,
    R::PayloadFormatInvalid,
    R::RetainNotSupported,
    R::QoSNotSupported,
    R::UseAnotherServer,
    R::ServerMoved,
    R::SharedSubscriptionsNotSupported,
    R::ConnectionRateExceeded,
    R::MaximumConnectTime,
    R::SubscriptionIdentifiersNotSupported,
    R::WildcardSubscriptionsNotSupported,
];
pub(super) const AUTH_REASONS: &[ReasonCode] =
    &[R::Success, R::ContinueAuthentication, R::ReAuthenticate];
