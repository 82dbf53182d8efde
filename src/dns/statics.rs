//! Static zones: RFC 1035 zone files loaded from a directory and answered authoritatively.
//!
//! Parsing is hickory-proto's zone-file parser. Each file holds one zone; its origin is its
//! `$ORIGIN`, or else the file name without a trailing `.zone` (`example.test.zone` serves
//! `example.test.`). A zone may also lie inside the service domain (`service.local.zone` with
//! `db IN A 10.0.0.9`): its records are answered together with the registry's. The parser takes
//! some records no answer can carry as written (strings over 255 bytes, TXT without a string, a
//! CAA tag that is no tag); loading refuses their file, naming the record.
//!
//! Invariant: a `StaticZones` is immutable; a reload builds a new one and swaps it in whole, so a
//! broken file never leaves a half-loaded set in service.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
use hickory_proto::serialize::txt::Parser;

/// Why a zone directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What could not be read.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file is not a valid zone file.
    #[error("zone file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// Two files define the same zone.
    #[error("zone {zone} is defined twice, in {first} and {second}")]
    Duplicate {
        /// The zone.
        zone: String,
        /// One file.
        first: PathBuf,
        /// The other file.
        second: PathBuf,
    },
}

/// One zone's records.
#[derive(Debug)]
pub struct StaticZone {
    /// The zone's apex, lower case.
    pub apex: LowerName,
    /// The file it came from.
    pub path: PathBuf,
    /// The SOA at the apex, if the file has one (needed for negative answers outside the
    /// service domain).
    pub soa: Option<Record>,
    records: HashMap<LowerName, BTreeMap<RecordType, Vec<Record>>>,
    /// Every name that exists, owners and the empty non-terminals above them.
    names: HashSet<LowerName>,
}

/// What a static zone holds for a name.
#[derive(Debug, PartialEq)]
pub enum StaticLookup<'a> {
    /// Records of the asked type (or the name's CNAME).
    Records(&'a [Record]),
    /// The name exists without that type.
    NoData,
    /// The name does not exist in this zone.
    NxDomain,
}

impl StaticZone {
    /// Parses one zone file.
    pub fn load(path: &Path) -> Result<StaticZone, ZoneError> {
        let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
            path: path.to_owned(),
            source,
        })?;
        StaticZone::parse(text, path)
    }

    /// Parses the text of the zone file at `path` (whose name gives the origin when the text
    /// sets no `$ORIGIN`). Apart from [`StaticZone::load`] so the fuzz check can parse text
    /// without writing files.
    pub fn parse(text: String, path: &Path) -> Result<StaticZone, ZoneError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let origin = Name::from_ascii(file_name.strip_suffix(".zone").unwrap_or(&file_name)).ok();
        let parse_error = |message: String| ZoneError::Parse {
            path: path.to_owned(),
            message,
        };
        let (mut apex, sets) = Parser::new(text, Some(path.to_owned()), origin)
            .parse()
            .map_err(|e| parse_error(e.to_string()))?;
        // The parser keeps `$ORIGIN example.org` (no final dot) as a relative name, though it
        // places the records under it as absolute names: the apex would equal none of them, so
        // the SOA at the apex went unseen (negative answers without it) and two files of one
        // zone were not told apart. The apex is the absolute name the records sit under.
        apex.set_fqdn(true);
        let apex = LowerName::new(&apex);
        let mut zone = StaticZone {
            apex: apex.clone(),
            path: path.to_owned(),
            soa: None,
            records: HashMap::new(),
            names: HashSet::new(),
        };
        for (key, set) in sets {
            if !apex.zone_of(&key.name) {
                return Err(parse_error(format!(
                    "{} is outside the zone {apex}",
                    key.name
                )));
            }
            let records: Vec<Record> = set.records_without_rrsigs().cloned().collect();
            if let Some(reason) = records.iter().find_map(unsendable) {
                return Err(parse_error(reason));
            }
            if key.record_type == RecordType::SOA && key.name == apex {
                zone.soa = records.first().cloned();
            }
            let mut name = key.name.clone();
            while apex.zone_of(&name) && zone.names.insert(name.clone()) && name != apex {
                name = name.base_name();
            }
            zone.records
                .entry(key.name)
                .or_default()
                .entry(key.record_type)
                .or_default()
                .extend(records);
        }
        Ok(zone)
    }

    /// The records for `name` and `qtype`. A name with a CNAME answers it for every other type.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> StaticLookup<'_> {
        let Some(types) = self.records.get(name) else {
            return if self.names.contains(name) {
                StaticLookup::NoData
            } else {
                StaticLookup::NxDomain
            };
        };
        if let Some(records) = types.get(&qtype) {
            return StaticLookup::Records(records);
        }
        if qtype != RecordType::CNAME {
            if let Some(cname) = types.get(&RecordType::CNAME) {
                return StaticLookup::Records(cname);
            }
        }
        if qtype == RecordType::ANY {
            if let Some((_, records)) = types.iter().next() {
                // RFC 8482: one RRset is a complete answer to ANY.
                return StaticLookup::Records(records);
            }
        }
        StaticLookup::NoData
    }

    /// Every record set, by owner and type (for the fuzz check, which holds `lookup` to them).
    pub(crate) fn record_sets(&self) -> impl Iterator<Item = (&LowerName, RecordType, &[Record])> {
        self.records.iter().flat_map(|(name, types)| {
            types
                .iter()
                .map(move |(rtype, records)| (name, *rtype, records.as_slice()))
        })
    }

    /// Number of record sets, for logs.
    pub fn len(&self) -> usize {
        self.records.values().map(|t| t.len()).sum()
    }

    /// Whether the zone holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why `record`, which the zone-file parser took, cannot be answered as it reads, if so.
fn unsendable(record: &Record) -> Option<String> {
    // The parser takes strings of any length (a TXT or HINFO string over 255 bytes), which no
    // answer can carry: every query for the name would fail to encode.
    let wire = match record.to_bytes() {
        Ok(wire) => wire,
        Err(e) => {
            return Some(format!(
                "{} {} cannot be sent in DNS answers: {e}",
                record.name,
                record.record_type()
            ))
        }
    };
    if let RData::TXT(txt) = &record.data {
        // RFC 1035 3.3.14: TXT data is one or more strings. The parser takes `TXT` with none,
        // which would go out with empty RDATA, which resolvers read as no TXT at all.
        if txt.txt_data.is_empty() {
            return Some(format!(
                "{} TXT holds no string: a TXT record needs at least one (\"\" for an empty one)",
                record.name
            ));
        }
    }
    // The parser also takes data whose wire form reads back as something else (a CAA tag with
    // characters a tag cannot hold): resolvers would get another record than the file says.
    match Record::from_bytes(&wire) {
        Ok(sent) if sent == *record => None,
        _ => Some(format!(
            "{} {} is not sent as written ({}): check its data",
            record.name,
            record.record_type(),
            record.data
        )),
    }
}

/// Every static zone, found by the longest apex that contains a name.
#[derive(Debug, Default)]
pub struct StaticZones {
    /// Sorted by apex depth, deepest first, so the first match is the most specific zone.
    zones: Vec<StaticZone>,
}

impl StaticZones {
    /// No zones.
    pub fn empty() -> StaticZones {
        StaticZones::default()
    }

    /// Loads every file in `dir` (not hidden files, not subdirectories). Any broken file fails
    /// the whole load, naming the file, so the caller can keep what it had.
    pub fn load_dir(dir: &Path) -> Result<StaticZones, ZoneError> {
        let read_error = |source| ZoneError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_error)?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_type().map(|t| t.is_file()).unwrap_or(false))
            .filter(|entry| !entry.file_name().to_string_lossy().starts_with('.'))
            .map(|entry| entry.path())
            .collect();
        paths.sort();
        let mut zones: Vec<StaticZone> = Vec::new();
        for path in paths {
            let zone = StaticZone::load(&path)?;
            if let Some(other) = zones.iter().find(|z| z.apex == zone.apex) {
                return Err(ZoneError::Duplicate {
                    zone: zone.apex.to_string(),
                    first: other.path.clone(),
                    second: path,
                });
            }
            zones.push(zone);
        }
        zones.sort_by_key(|z| std::cmp::Reverse(z.apex.num_labels()));
        Ok(StaticZones { zones })
    }

    /// The most specific zone containing `name`.
    pub fn find(&self, name: &LowerName) -> Option<&StaticZone> {
        self.zones.iter().find(|z| z.apex.zone_of(name))
    }

    /// The zones, deepest first.
    pub fn zones(&self) -> &[StaticZone] {
        &self.zones
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(name: &str) -> LowerName {
        LowerName::new(&Name::from_ascii(name).unwrap())
    }

    #[test]
    fn loads_a_directory_and_finds_the_deepest_zone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("example.test.zone"),
            "$TTL 60\n@ IN SOA ns hostmaster 1 60 60 60 30\n@ IN NS ns\nns IN A 192.0.2.1\nwww IN A 192.0.2.2\nalias IN CNAME www\na.b.deep IN TXT \"x\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("service.local.zone"),
            "$ORIGIN service.local.\n$TTL 30\ndb IN A 10.0.0.9\n",
        )
        .unwrap();
        std::fs::write(dir.path().join(".hidden"), "garbage").unwrap();
        let zones = StaticZones::load_dir(dir.path()).unwrap();
        assert_eq!(zones.zones().len(), 2);
        let zone = zones.find(&lower("WWW.example.test.")).unwrap();
        assert!(
            matches!(zone.lookup(&lower("www.example.test."), RecordType::A), StaticLookup::Records(r) if r.len() == 1)
        );
        assert_eq!(
            zone.lookup(&lower("www.example.test."), RecordType::AAAA),
            StaticLookup::NoData
        );
        assert_eq!(
            zone.lookup(&lower("nope.example.test."), RecordType::A),
            StaticLookup::NxDomain
        );
        assert_eq!(
            zone.lookup(&lower("b.deep.example.test."), RecordType::A),
            StaticLookup::NoData,
            "empty non-terminal"
        );
        assert!(
            matches!(zone.lookup(&lower("alias.example.test."), RecordType::A), StaticLookup::Records(r) if r[0].record_type() == RecordType::CNAME)
        );
        assert!(zone.soa.is_some());
        assert!(zones.find(&lower("db.service.local.")).is_some());
        assert!(zones.find(&lower("example.com.")).is_none());
    }

    #[test]
    fn the_example_zones_directory_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones");
        let zones = StaticZones::load_dir(&dir).unwrap();
        let www = lower("www.example.internal.");
        assert!(matches!(
            zones.find(&www).unwrap().lookup(&www, RecordType::A),
            StaticLookup::Records(_)
        ));
        let db = lower("db.service.local.");
        assert!(matches!(
            zones.find(&db).unwrap().lookup(&db, RecordType::A),
            StaticLookup::Records(_)
        ));
    }

    #[test]
    fn a_broken_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.test.zone"),
            "www IN A not-an-address\n",
        )
        .unwrap();
        let err = StaticZones::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.test.zone"), "{err}");
    }
}
