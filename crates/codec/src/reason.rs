//! MQTT 5 reason codes, and how they map to MQTT 3.1.1 return codes.

/// An MQTT 5 reason code. MQTT 3.1.1 packets carry the nearest equivalent on the wire (CONNACK
/// return codes 0-5, SUBACK 0x00-0x02/0x80) and decode to these values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the specification's
pub enum ReasonCode {
    /// Success, Normal disconnection or Granted QoS 0, depending on the packet.
    #[default]
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    /// The reason code for a byte, `None` for values the specification does not define.
    pub fn from_u8(value: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match value {
            0x00 => Success,
            0x01 => GrantedQoS1,
            0x02 => GrantedQoS2,
            0x04 => DisconnectWithWill,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QoSNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether this code reports a failure (0x80 and above).
    pub fn is_error(self) -> bool {
        self.as_u8() >= 0x80
    }

    /// The MQTT 3.1.1 CONNACK return code (0-5) closest to this reason.
    ///
    /// 3.1.1 knows only six outcomes, so the MQTT 5 codes are folded by who is at fault, because
    /// that is what a 3.1.1 client acts on (retry later or give up):
    /// - 0 accepted: every non-error code (only `Success` makes sense in a CONNACK);
    /// - 1 unacceptable protocol version: `UnsupportedProtocolVersion`;
    /// - 2 identifier rejected: `ClientIdentifierNotValid`;
    /// - 3 server unavailable: conditions on the server side that may pass (`ServerUnavailable`,
    ///   `ServerBusy`, `ServerShuttingDown`, `UseAnotherServer`, `ServerMoved`, `QuotaExceeded`,
    ///   `ConnectionRateExceeded`, `MessageRateTooHigh`, `UnspecifiedError`,
    ///   `ImplementationSpecificError`, and any other server-side code);
    /// - 4 bad user name or password: `BadUserNameOrPassword`, `BadAuthenticationMethod`;
    /// - 5 not authorized: refusals caused by the client that retrying will not cure (`NotAuthorized`,
    ///   `Banned`, `MalformedPacket`, `ProtocolError`, `PacketTooLarge`, `TopicNameInvalid`,
    ///   `PayloadFormatInvalid`, `RetainNotSupported`, `QoSNotSupported`, and the other
    ///   client-caused codes).
    pub fn to_v311_connack(self) -> u8 {
        use ReasonCode::*;
        match self {
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            NotAuthorized
            | Banned
            | MalformedPacket
            | ProtocolError
            | PacketTooLarge
            | TopicNameInvalid
            | TopicFilterInvalid
            | TopicAliasInvalid
            | PayloadFormatInvalid
            | RetainNotSupported
            | QoSNotSupported
            | KeepAliveTimeout
            | SessionTakenOver
            | AdministrativeAction
            | PacketIdentifierInUse
            | PacketIdentifierNotFound
            | ReceiveMaximumExceeded
            | SharedSubscriptionsNotSupported
            | SubscriptionIdentifiersNotSupported
            | WildcardSubscriptionsNotSupported => 5,
            code if code.is_error() => 3,
            _ => 0,
        }
    }

    /// The reason code for an MQTT 3.1.1 CONNACK return code, `None` for values above 5.
    ///
    /// This is the inverse of [`ReasonCode::to_v311_connack`] on the six codes that map to
    /// themselves, so a 3.1.1 CONNACK decodes to the code a broker would send for it.
    pub fn from_v311_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// The MQTT 3.1.1 SUBACK return code: the granted QoS (0-2), or 0x80 for any failure.
    ///
    /// Non-error codes other than the three grants cannot be expressed and count as a failure, so a
    /// 3.1.1 client never believes a subscription exists that the broker did not make.
    pub fn to_v311_suback(self) -> u8 {
        match self {
            ReasonCode::Success => 0x00,
            ReasonCode::GrantedQoS1 => 0x01,
            ReasonCode::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u8_inverts_as_u8_for_every_defined_value() {
        let mut defined = 0;
        for value in 0..=255u8 {
            if let Some(code) = ReasonCode::from_u8(value) {
                assert_eq!(code.as_u8(), value);
                defined += 1;
            }
        }
        // 43 codes in the MQTT 5 table (Success, Normal disconnection and Granted QoS 0 share 0x00).
        assert_eq!(defined, 43);
        assert_eq!(ReasonCode::from_u8(0x03), None);
        assert_eq!(ReasonCode::from_u8(0xA3), None);
    }

    #[test]
    fn v311_connack_mapping_follows_the_documented_table() {
        use ReasonCode::*;
        let cases = [
            (Success, 0),
            (UnsupportedProtocolVersion, 1),
            (ClientIdentifierNotValid, 2),
            (ServerUnavailable, 3),
            (ServerBusy, 3),
            (ServerShuttingDown, 3),
            (UnspecifiedError, 3),
            (QuotaExceeded, 3),
            (BadUserNameOrPassword, 4),
            (BadAuthenticationMethod, 4),
            (NotAuthorized, 5),
            (Banned, 5),
            (MalformedPacket, 5),
        ];
        for (code, expected) in cases {
            assert_eq!(code.to_v311_connack(), expected, "{code:?}");
        }
    }

    #[test]
    fn v311_connack_round_trips_on_its_six_codes() {
        for code in 0..=5u8 {
            let reason = ReasonCode::from_v311_connack(code).expect("codes 0-5 are defined");
            assert_eq!(reason.to_v311_connack(), code);
        }
        assert_eq!(ReasonCode::from_v311_connack(6), None);
    }

    #[test]
    fn v311_suback_folds_failures_into_0x80() {
        assert_eq!(ReasonCode::Success.to_v311_suback(), 0);
        assert_eq!(ReasonCode::GrantedQoS2.to_v311_suback(), 2);
        assert_eq!(ReasonCode::NotAuthorized.to_v311_suback(), 0x80);
        assert_eq!(ReasonCode::NoMatchingSubscribers.to_v311_suback(), 0x80);
    }
}
