//! DNS-SD's records in an UPDATE's update section, mapped onto beacon's instances (docs/UPDATE.md
//! has the table):
//!
//! - the SRV at `<id>._<service>._tcp.<zone>` gives the instance: its port and weight, and a
//!   target host whose A or AAAA record, in the same update, gives its one address;
//! - TXT strings at the instance's name give its metadata (`key=value`, DNS-SD's form);
//! - the PTR `_<service>._tcp.<zone>` → instance is accepted and implied (beacon answers it from
//!   the instances);
//! - deleting the instance name's records, or its SRV RRset, deregisters it.
//!
//! What maps onto nothing beacon holds is refused, saying why. Pure: the registry is not read
//! here, so every case has a unit test below.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::Refusal;
use crate::dns::Zone;
use crate::registry::{self, RegistrationRequest};

/// What one UPDATE does to the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Instances registered (or renewed: the same registration again), in name order. Their
    /// `ttl` is left for the lease.
    pub register: Vec<RegistrationRequest>,
    /// Instances deregistered, `(service, id)`.
    pub deregister: Vec<(String, String)>,
}

impl Plan {
    /// The services it changes, each once.
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = self
            .register
            .iter()
            .map(|r| r.service.as_str())
            .chain(self.deregister.iter().map(|(s, _)| s.as_str()))
            .collect();
        services.sort_unstable();
        services.dedup();
        services
    }
}

/// What a name in the zone is, to DNS-SD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `<id>._<service>._tcp` (or `._udp`): an instance.
    Instance {
        /// The service, without its underscore.
        service: String,
        /// The instance id.
        id: String,
    },
    /// `_<service>._tcp` (or `._udp`): the service type, whose PTRs list the instances.
    ServiceType {
        /// The service, without its underscore.
        service: String,
    },
    /// Anything else: a target host, or a name beacon holds nothing at.
    Other,
}

/// What `name` is; `None` when it is outside the zone.
pub fn role(zone: &Zone, name: &Name) -> Option<Role> {
    let labels = zone.relative_labels(name)?;
    let service = |label: &str| label.strip_prefix('_').map(str::to_string);
    let transport = |label: &str| label == "_tcp" || label == "_udp";
    Some(match labels.as_slice() {
        [id, svc, proto] if transport(proto) && !id.starts_with('_') => match service(svc) {
            Some(service) => Role::Instance {
                service,
                id: id.clone(),
            },
            None => Role::Other,
        },
        [svc, proto] if transport(proto) => match service(svc) {
            Some(service) => Role::ServiceType { service },
            None => Role::Other,
        },
        _ => Role::Other,
    })
}

/// EDE info codes (RFC 8914 §4) the refusals use.
pub mod ede {
    /// Other: the text says it.
    pub const OTHER: u16 = 0;
    /// Prohibited: policy refuses it.
    pub const PROHIBITED: u16 = 18;
    /// Not Authoritative.
    pub const NOT_AUTHORITATIVE: u16 = 20;
    /// Not Supported: it maps onto nothing beacon holds.
    pub const NOT_SUPPORTED: u16 = 21;
}

fn unsupported(text: String) -> Refusal {
    Refusal::new(ResponseCode::Refused, ede::NOT_SUPPORTED, text)
}

#[derive(Default)]
struct Instance {
    srv: Vec<(u16, u16, u16, Name)>,
    txt: Vec<String>,
    deleted: bool,
    /// The name as sent, for messages.
    name: String,
}

/// Maps the update section `updates` (RFC 2136 §2.5) of an UPDATE for `zone` onto a plan.
pub fn plan(zone: &Zone, updates: &[Record]) -> Result<Plan, Refusal> {
    let mut instances: BTreeMap<(String, String), Instance> = BTreeMap::new();
    let mut hosts: BTreeMap<Name, Vec<IpAddr>> = BTreeMap::new();
    for record in updates {
        let name = &record.name;
        let Some(role) = role(zone, name) else {
            return Err(Refusal::new(
                ResponseCode::NotZone,
                ede::NOT_AUTHORITATIVE,
                format!("{name} is outside the zone {}", zone.apex),
            ));
        };
        let rtype = record.record_type();
        match record.dns_class {
            DNSClass::IN => add(&role, record, &mut instances, &mut hosts)?,
            // RFC 2136 §2.5.2/§2.5.4: delete an RRset (or all of a name's, type ANY); §2.5.4
            // one RR. Either way the TTL is 0 and, for ANY, the data empty.
            DNSClass::ANY | DNSClass::NONE => {
                if record.ttl != 0 {
                    return Err(Refusal::new(
                        ResponseCode::FormErr,
                        ede::OTHER,
                        format!("a delete of {name} {rtype} must have TTL 0 (RFC 2136 §2.5)"),
                    ));
                }
                match role {
                    Role::Instance { service, id } => {
                        let entry = instances.entry((service, id)).or_default();
                        entry.name = name.to_string();
                        // Deleting its SRV, or all its records, deregisters it; deleting its
                        // TXT alone is honoured only beside a new registration (a
                        // registration replaces the metadata whole); other types it never has.
                        match rtype {
                            RecordType::ANY | RecordType::SRV => entry.deleted = true,
                            _ => {}
                        }
                    }
                    Role::ServiceType { .. } if rtype == RecordType::PTR => {}
                    Role::ServiceType { service } => {
                        return Err(unsupported(format!(
                            "{name} {rtype}: beacon keeps nothing at the service type _{service} but the PTRs its instances imply; deregister an instance by deleting its name <id>._{service}._tcp"
                        )))
                    }
                    // A target host's records live in the instance that names it.
                    Role::Other => {}
                }
            }
            class => {
                return Err(Refusal::new(
                    ResponseCode::FormErr,
                    ede::OTHER,
                    format!("{name} {rtype}: class {class} is not IN, ANY or NONE (RFC 2136 §2.5)"),
                ))
            }
        }
    }

    let mut plan = Plan::default();
    let mut targeted: Vec<&Name> = Vec::new();
    for ((service, id), instance) in &instances {
        let service = registry::service_name(service)
            .map_err(|e| unsupported(format!("{}: {e}", instance.name)))?;
        let id = registry::instance_id(id)
            .map_err(|e| unsupported(format!("{}: {e}", instance.name)))?;
        match instance.srv.as_slice() {
            [] if !instance.txt.is_empty() => {
                return Err(unsupported(format!(
                    "{}: TXT without an SRV; beacon changes an instance's metadata only with its whole registration (SRV, the target's address, TXT) in one update",
                    instance.name
                )))
            }
            [] if instance.deleted => plan.deregister.push((service, id)),
            [] => {}
            [(priority, weight, port, target)] => {
                if *priority != 0 {
                    return Err(unsupported(format!(
                        "{}: SRV priority {priority}; beacon's instances have no priority (only a weight), so it must be 0",
                        instance.name
                    )));
                }
                if *port == 0 {
                    return Err(unsupported(format!(
                        "{}: SRV port 0; an instance needs a port from 1 to 65535",
                        instance.name
                    )));
                }
                let address = match hosts.get(target).map(Vec::as_slice) {
                    Some([address]) => *address,
                    Some([]) | None => {
                        return Err(unsupported(format!(
                            "{}: the SRV's target {target} has no A or AAAA record in this update; beacon takes the instance's address from it",
                            instance.name
                        )))
                    }
                    Some(several) => {
                        return Err(unsupported(format!(
                            "{}: the SRV's target {target} has {} addresses; beacon holds one address per instance: send one A or one AAAA",
                            instance.name,
                            several.len()
                        )))
                    }
                };
                targeted.push(target);
                plan.register.push(RegistrationRequest {
                    service,
                    id: Some(id),
                    address: Some(address),
                    port: *port,
                    weight: Some(*weight),
                    tags: Vec::new(),
                    meta: meta(&instance.txt),
                    ttl: None,
                });
            }
            several => {
                return Err(unsupported(format!(
                    "{}: {} SRV records; beacon's instance has one port and one address, so one SRV",
                    instance.name,
                    several.len()
                )))
            }
        }
    }
    if let Some(host) = hosts.keys().find(|host| !targeted.contains(host)) {
        return Err(unsupported(format!(
            "{host}: an address that no SRV in this update targets; beacon holds addresses only as an instance's (its SRV, target and address in one update)"
        )));
    }
    Ok(plan)
}

/// Files one added record (class IN).
fn add(
    role: &Role,
    record: &Record,
    instances: &mut BTreeMap<(String, String), Instance>,
    hosts: &mut BTreeMap<Name, Vec<IpAddr>>,
) -> Result<(), Refusal> {
    let name = &record.name;
    match (role, &record.data) {
        (Role::Instance { service, id }, RData::SRV(srv)) => {
            let entry = instances
                .entry((service.clone(), id.clone()))
                .or_default();
            entry.name = name.to_string();
            entry.srv.push((
                srv.priority,
                srv.weight,
                srv.port,
                srv.target.to_lowercase(),
            ));
        }
        (Role::Instance { service, id }, RData::TXT(txt)) => {
            let entry = instances
                .entry((service.clone(), id.clone()))
                .or_default();
            entry.name = name.to_string();
            for string in txt.txt_data.iter() {
                let text = std::str::from_utf8(string).map_err(|_| {
                    unsupported(format!("{name} TXT: a string that is not UTF-8"))
                })?;
                entry.txt.push(text.to_string());
            }
        }
        (Role::ServiceType { service }, RData::PTR(target)) => match role_of_ptr(target) {
            Some(instance_service) if instance_service == *service => {}
            _ => {
                return Err(unsupported(format!(
                    "{name} PTR {}: the PTR of _{service}._tcp must name an instance <id>._{service}._tcp; beacon implies it from the instances",
                    target.0
                )))
            }
        },
        (_, RData::A(a)) => hosts
            .entry(name.to_lowercase())
            .or_default()
            .push(IpAddr::V4(a.0)),
        (_, RData::AAAA(aaaa)) => hosts
            .entry(name.to_lowercase())
            .or_default()
            .push(IpAddr::V6(aaaa.0)),
        (role, data) => {
            let rtype = data.record_type();
            let what = match role {
                Role::Instance { .. } => "an instance name holds SRV and TXT",
                Role::ServiceType { .. } => "a service type holds the PTRs to its instances",
                Role::Other => "a host name holds A or AAAA for an SRV's target",
            };
            return Err(unsupported(format!(
                "{name} {rtype}: beacon cannot hold that ({what})"
            )));
        }
    }
    Ok(())
}

/// The service a PTR's target names, when the target is `<id>._<service>._tcp.…`.
fn role_of_ptr(target: &hickory_proto::rr::rdata::PTR) -> Option<String> {
    let labels: Vec<String> = target
        .0
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    match labels.as_slice() {
        [id, svc, proto, ..] if (proto == "_tcp" || proto == "_udp") && !id.starts_with('_') => {
            svc.strip_prefix('_').map(str::to_string)
        }
        _ => None,
    }
}

/// DNS-SD TXT strings as metadata: `key=value`, a `key` alone with an empty value; the empty
/// string (DNS-SD's "no metadata") and a string with no key are left out.
fn meta(strings: &[String]) -> Vec<(String, String)> {
    strings
        .iter()
        .filter_map(|s| {
            let (key, value) = s.split_once('=').unwrap_or((s.as_str(), ""));
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, SRV, TXT};

    use super::*;

    fn zone() -> Zone {
        Zone::new("service.local").unwrap()
    }

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    fn rec(owner: &str, data: RData) -> Record {
        Record::from_rdata(name(owner), 60, data)
    }

    fn delete(owner: &str, rtype: RecordType) -> Record {
        let mut r = Record::update0(name(owner), 0, rtype);
        r.dns_class = DNSClass::ANY;
        r
    }

    fn srv(port: u16, target: &str) -> RData {
        RData::SRV(SRV::new(0, 5, port, name(target)))
    }

    fn registration() -> Vec<Record> {
        vec![
            rec(
                "_web._tcp.service.local.",
                RData::PTR(PTR(name("web-1._web._tcp.service.local."))),
            ),
            rec(
                "web-1._web._tcp.service.local.",
                srv(8080, "host-1.service.local."),
            ),
            rec(
                "web-1._web._tcp.service.local.",
                RData::TXT(TXT::new(vec![
                    "path=/api".into(),
                    "tls".into(),
                    String::new(),
                ])),
            ),
            rec("host-1.service.local.", RData::A(A::new(10, 0, 0, 7))),
        ]
    }

    #[test]
    fn names_have_their_roles() {
        let z = zone();
        assert_eq!(
            role(&z, &name("Web-1._Web._TCP.service.local.")),
            Some(Role::Instance {
                service: "web".into(),
                id: "web-1".into()
            })
        );
        assert_eq!(
            role(&z, &name("_web._udp.service.local.")),
            Some(Role::ServiceType {
                service: "web".into()
            })
        );
        assert_eq!(role(&z, &name("host.service.local.")), Some(Role::Other));
        assert_eq!(role(&z, &name("web.example.com.")), None);
    }

    #[test]
    fn srv_target_address_and_txt_make_one_registration() {
        let plan = plan(&zone(), &registration()).unwrap();
        assert_eq!(plan.deregister, []);
        assert_eq!(
            plan.register,
            [RegistrationRequest {
                service: "web".into(),
                id: Some("web-1".into()),
                address: Some("10.0.0.7".parse().unwrap()),
                port: 8080,
                weight: Some(5),
                tags: vec![],
                meta: vec![
                    ("path".into(), "/api".into()),
                    ("tls".into(), String::new())
                ],
                ttl: None,
            }]
        );
        assert_eq!(plan.services(), ["web"]);
        let mut v6 = registration();
        v6[3] = rec(
            "host-1.service.local.",
            RData::AAAA(AAAA::from_str("fd00::7").unwrap()),
        );
        assert_eq!(
            plan_of(v6).register[0].address,
            Some("fd00::7".parse().unwrap())
        );
    }

    fn plan_of(records: Vec<Record>) -> Plan {
        plan(&zone(), &records).unwrap()
    }

    fn refusal(records: Vec<Record>) -> (ResponseCode, String) {
        let r = plan(&zone(), &records).unwrap_err();
        (r.rcode, r.text)
    }

    #[test]
    fn deleting_the_instance_name_or_its_srv_deregisters() {
        for rtype in [RecordType::ANY, RecordType::SRV] {
            let p = plan_of(vec![delete("web-1._web._tcp.service.local.", rtype)]);
            assert_eq!(p.deregister, [("web".to_string(), "web-1".to_string())]);
        }
        let mut one = Record::from_rdata(
            name("web-1._web._tcp.service.local."),
            0,
            srv(8080, "h.service.local."),
        );
        one.dns_class = DNSClass::NONE;
        assert_eq!(plan_of(vec![one]).deregister.len(), 1);
        // SRP's removal deletes the host's records too, and the PTR: both implied.
        let p = plan_of(vec![
            delete("web-1._web._tcp.service.local.", RecordType::ANY),
            delete("host-1.service.local.", RecordType::ANY),
            delete("_web._tcp.service.local.", RecordType::PTR),
        ]);
        assert_eq!(p.deregister.len(), 1);
        // Delete then add is a replacement: the registration alone.
        let mut replace = vec![delete("web-1._web._tcp.service.local.", RecordType::ANY)];
        replace.extend(registration());
        let p = plan_of(replace);
        assert_eq!((p.register.len(), p.deregister.len()), (1, 0));
        // The TXT alone cannot be deleted: the registration is one whole.
        let p = plan_of(vec![delete(
            "web-1._web._tcp.service.local.",
            RecordType::TXT,
        )]);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn what_maps_onto_nothing_is_refused_saying_why() {
        let outside = vec![rec(
            "web-1._web._tcp.example.com.",
            srv(1, "h.example.com."),
        )];
        assert_eq!(refusal(outside).0, ResponseCode::NotZone);
        let no_address = registration()[..3].to_vec();
        assert!(refusal(no_address).1.contains("no A or AAAA"));
        let mut two = registration();
        two.push(rec(
            "host-1.service.local.",
            RData::AAAA(AAAA::from_str("fd00::1").unwrap()),
        ));
        assert!(refusal(two).1.contains("one address per instance"));
        let mut mx = registration();
        mx.push(rec(
            "web-1._web._tcp.service.local.",
            RData::MX(MX::new(1, name("m."))),
        ));
        let (code, text) = refusal(mx);
        assert_eq!(code, ResponseCode::Refused);
        assert!(text.contains("MX"), "{text}");
        let mut priority = registration();
        priority[1] = rec(
            "web-1._web._tcp.service.local.",
            RData::SRV(SRV::new(1, 0, 80, name("host-1.service.local."))),
        );
        assert!(refusal(priority).1.contains("priority"));
        let stray = vec![rec("host-9.service.local.", RData::A(A::new(10, 0, 0, 9)))];
        assert!(refusal(stray).1.contains("no SRV"));
        let txt_only = vec![registration()[2].clone()];
        assert!(refusal(txt_only).1.contains("TXT without an SRV"));
        let mut two_srv = registration();
        two_srv.push(rec(
            "web-1._web._tcp.service.local.",
            srv(9090, "host-1.service.local."),
        ));
        assert!(refusal(two_srv).1.contains("2 SRV"));
        let bad_ptr = vec![rec(
            "_web._tcp.service.local.",
            RData::PTR(PTR(name("x._db._tcp.service.local."))),
        )];
        assert!(refusal(bad_ptr).1.contains("PTR"));
        let mut ttl = delete("web-1._web._tcp.service.local.", RecordType::ANY);
        ttl.ttl = 5;
        assert_eq!(refusal(vec![ttl]).0, ResponseCode::FormErr);
        let bad_id = vec![
            rec(
                "web_1._web._tcp.service.local.",
                srv(80, "h.service.local."),
            ),
            rec("h.service.local.", RData::A(A::new(10, 0, 0, 1))),
        ];
        assert!(refusal(bad_id).1.contains("web_1"));
    }
}
