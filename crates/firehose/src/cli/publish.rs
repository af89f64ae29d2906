//! `firehose pub`: publish one message over MQTT (TCP, TLS, WebSocket) and say plainly whether
//! the server stored it. Exit status 0 means acknowledged (QoS 1: PUBACK; QoS 2: PUBCOMP) or,
//! for QoS 0, written to the connection.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use firehose_codec::{
    Connect, Packet, Protocol, PubResponse, Publish, PublishProperties, QoS, ReasonCode,
};

use super::mqtt_client::{bytes_of, MqttClient};
use super::net::servers_and_tls;

/// How long an acknowledgement may take.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `firehose pub`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when the server acknowledged the message (QoS 1 and 2: \
stored in its log), 1 with the reason otherwise (refused CONNECT, not authorized, unreachable). \
With QoS 0 there is no acknowledgement; MQTT 3.1.1 has no negative one, so use the default \
MQTT 5 to learn about refusals.\n\nExamples:\n  firehose pub -u bot -P secret gerrit/demo/comment-added '{\"comment\":\"recheck\"}'\n  \
echo hello | firehose pub -u bot -P secret logs/host/app\n  firehose pub --file event.json -q 2 -r ..."
)]
pub(crate) struct PubArgs {
    /// Topic to publish to.
    topic: String,
    /// The payload. Without it (and without --file), the payload is read from stdin; `-`
    /// reads stdin too.
    payload: Option<String>,
    /// Read the payload from this file.
    #[arg(long, short = 'f', conflicts_with = "payload")]
    file: Option<PathBuf>,
    /// Servers to try in order: mqtt://, mqtts://, ws://, wss://. The first that accepts the
    /// connection is used.
    #[arg(
        long,
        short = 's',
        env = "FIREHOSE_SERVER",
        value_delimiter = ',',
        default_value = "mqtt://localhost:1883"
    )]
    server: Vec<String>,
    /// Quality of service: 0, 1 or 2.
    #[arg(long, short = 'q', default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Ask the server to keep this message as the topic's retained message.
    #[arg(long, short = 'r')]
    retain: bool,
    /// User name (publishers must authenticate).
    #[arg(long, short = 'u', env = "FIREHOSE_USERNAME")]
    username: Option<String>,
    /// Password (better: the FIREHOSE_PASSWORD environment variable).
    #[arg(long, short = 'P', env = "FIREHOSE_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// MQTT client identifier (default: empty, the server assigns one).
    #[arg(long, short = 'i')]
    client_id: Option<String>,
    /// MQTT version: 5 (default; refusals come with a reason code) or 3 (3.1.1).
    #[arg(long = "mqtt-version", default_value = "5", value_parser = ["3", "4", "5", "3.1.1"])]
    mqtt_version: String,
    /// PEM file of CA certificates to trust for mqtts:// and wss:// (default: the system's).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// MQTT 5 user property `name=value` (repeatable).
    #[arg(long = "user-property", short = 'D', value_name = "NAME=VALUE")]
    user_properties: Vec<String>,
    /// MQTT 5 content type (e.g. `application/json`).
    #[arg(long)]
    content_type: Option<String>,
    /// MQTT 5 response topic.
    #[arg(long)]
    response_topic: Option<String>,
    /// MQTT 5 correlation data (text).
    #[arg(long)]
    correlation_data: Option<String>,
    /// MQTT 5 message expiry interval, seconds.
    #[arg(long)]
    message_expiry: Option<u32>,
    /// MQTT 5 payload format indicator: the payload is UTF-8 text.
    #[arg(long)]
    utf8: bool,
}

impl PubArgs {
    fn protocol(&self) -> Protocol {
        if self.mqtt_version == "5" {
            Protocol::V5
        } else {
            Protocol::V311
        }
    }

    fn payload(&self) -> anyhow::Result<Bytes> {
        if let Some(path) = &self.file {
            let data = std::fs::read(path)
                .with_context(|| format!("cannot read payload file {}", path.display()))?;
            return Ok(Bytes::from(data));
        }
        match self.payload.as_deref() {
            Some(text) if text != "-" => Ok(bytes_of(text)),
            _ => {
                let mut data = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut data)
                    .context("cannot read the payload from stdin")?;
                Ok(Bytes::from(data))
            }
        }
    }

    fn properties(&self) -> anyhow::Result<PublishProperties> {
        let mut user_properties = Vec::new();
        for pair in &self.user_properties {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("--user-property: expected NAME=VALUE, got {pair:?}"))?;
            user_properties.push((name.to_owned(), value.to_owned()));
        }
        Ok(PublishProperties {
            payload_format_indicator: self.utf8.then_some(1),
            message_expiry_interval: self.message_expiry,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.as_deref().map(bytes_of),
            user_properties,
            content_type: self.content_type.clone(),
            ..PublishProperties::default()
        })
    }
}

/// Runs the command.
///
/// # Errors
/// Bad flags, an unreadable payload, every server unreachable, or a refusal (with its reason).
pub(crate) fn run(args: PubArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(publish(args))
}

async fn publish(args: PubArgs) -> anyhow::Result<()> {
    let payload = args.payload()?;
    let properties = args.properties()?;
    let protocol = args.protocol();
    if protocol == Protocol::V311 && properties != PublishProperties::default() {
        bail!("MQTT 5 properties need --mqtt-version 5");
    }
    if args.username.is_none() {
        eprintln!(
            "firehose: warning: publishing anonymously; Firehose drops anonymous publishes (pass --username)"
        );
    }
    let (servers, tls) = servers_and_tls(&args.server, args.ca_file.as_deref())?;
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: args.client_id.clone().unwrap_or_default(),
        username: args.username.clone(),
        password: args.password.as_deref().map(bytes_of),
        ..Connect::default()
    };
    let mut errors = Vec::new();
    let mut client = None;
    for server in &servers {
        match MqttClient::connect(server, &tls, connect.clone()).await {
            Ok((c, _)) => {
                client = Some(c);
                break;
            }
            // A refusal (bad password) will not be cured by another server of the same broker,
            // but a blocked transport will: try them all and report every reason.
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let Some(mut client) = client else {
        bail!("{}", errors.join("; "));
    };
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtLeastOnce);
    let packet_id = (qos != QoS::AtMostOnce).then(|| client.packet_id());
    client
        .send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: args.retain,
            topic: args.topic.clone(),
            packet_id,
            properties,
            payload,
        }))
        .await?;
    let outcome = match packet_id {
        None => Ok(()),
        Some(id) => tokio::time::timeout(ACK_TIMEOUT, wait_ack(&mut client, id, qos))
            .await
            .with_context(|| format!("no acknowledgement within {ACK_TIMEOUT:?}"))?,
    };
    client.disconnect().await;
    outcome
}

fn refusal(kind: &str, ack: &PubResponse) -> anyhow::Error {
    let why = ack
        .properties
        .reason_string
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    anyhow::anyhow!(
        "publish refused ({kind} {:?}, {:#04x}){why}",
        ack.reason,
        ack.reason.as_u8()
    )
}

async fn wait_ack(client: &mut MqttClient, id: u16, qos: QoS) -> anyhow::Result<()> {
    loop {
        match client.recv().await? {
            Some(Packet::PubAck(ack)) if ack.packet_id == id => {
                return if ack.reason.is_error() {
                    Err(refusal("PUBACK", &ack))
                } else {
                    Ok(())
                };
            }
            Some(Packet::PubRec(rec)) if rec.packet_id == id && qos == QoS::ExactlyOnce => {
                if rec.reason.is_error() {
                    return Err(refusal("PUBREC", &rec));
                }
                client
                    .send(&Packet::PubRel(PubResponse {
                        packet_id: id,
                        reason: ReasonCode::Success,
                        properties: Default::default(),
                    }))
                    .await?;
            }
            Some(Packet::PubComp(comp)) if comp.packet_id == id => {
                return if comp.reason.is_error() {
                    Err(refusal("PUBCOMP", &comp))
                } else {
                    Ok(())
                };
            }
            Some(Packet::Disconnect(d)) => {
                let why = d
                    .properties
                    .reason_string
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                bail!(
                    "the server disconnected: {:?} ({:#04x}){why}",
                    d.reason,
                    d.reason.as_u8()
                );
            }
            Some(_) => {}
            None => bail!("the server closed the connection before acknowledging the message"),
        }
    }
}
