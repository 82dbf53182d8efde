//! The registry's side of signed requests (`crate::auth`): who owns an instance, and the order
//! of the signed requests applied to it.
//!
//! The registry knows the name of the key that registered each instance (its owner) and the
//! stamp of the last signed request applied to it; never keys or MACs. A stamp is a number
//! that grows with the request's signing time and tells two requests apart
//! (`auth::sign::stamp`). A signed request is applied only if its stamp is greater than the
//! instance's; an equal stamp is the same request again (a retransmission whose reply was
//! lost, or a replay of it), answered without being applied; a smaller one is refused as
//! replayed. An instance that left keeps its stamp here for the replay window
//! ([`Tombstones`]), so a captured register cannot bring it back and a retransmitted
//! deregister still gets its reply.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Instance, InstanceId, RegistryError};

/// Who sends a change, as `auth` established it. The default is an unsigned request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The name of the key that signed it; `None` when unsigned.
    pub owner: Option<Arc<str>>,
    /// Its stamp; 0 when unsigned.
    pub stamp: u64,
    /// The smallest stamp still inside the replay window: anything below it is refused
    /// before it gets here, so what the registry remembers of older stamps can go.
    pub floor: u64,
}

impl Origin {
    /// Whether the request was signed.
    pub fn is_signed(&self) -> bool {
        self.stamp != 0
    }
}

/// The key an instance was registered with, as an index into the registry's [`Owners`]: 4
/// bytes in the instance (its padding had room for them, a pointer would have grown it), 0 for
/// none.
pub type Owner = u32;

/// No owner: registered unsigned.
pub const NO_OWNER: Owner = 0;

/// The key names instances were registered with, each once; grow-only (a key's name costs a
/// few bytes, and a removed key's instances still name it).
#[derive(Default)]
pub(super) struct Owners {
    names: Vec<Arc<str>>,
    index: HashMap<Arc<str>, Owner>,
}

impl Owners {
    /// The owner called `name`, added if new.
    pub(super) fn get(&mut self, name: &str) -> Owner {
        if let Some(owner) = self.index.get(name) {
            return *owner;
        }
        let name: Arc<str> = name.into();
        self.names.push(name.clone());
        let owner = self.names.len() as Owner;
        self.index.insert(name, owner);
        owner
    }

    /// The owner called `name`, if any instance ever had it.
    pub(super) fn find(&self, name: &str) -> Option<Owner> {
        self.index.get(name).copied()
    }

    /// Every name, numbered from 1 by position.
    pub(super) fn all(&self) -> Vec<Arc<str>> {
        self.names.clone()
    }

    /// The name of `owner`; `None` for [`NO_OWNER`].
    pub(super) fn name(&self, owner: Owner) -> Option<&str> {
        (owner != NO_OWNER)
            .then(|| self.names.get(owner as usize - 1).map(|n| &**n))
            .flatten()
    }
}

/// What to do with a request, once ownership and stamps are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Carry it out.
    Apply,
    /// The same request as the last one applied: answer it as before, change nothing. For a
    /// deregister, the version its removal made.
    Repeat { removed_at: Option<u64> },
}

/// The removed instances' last stamps, kept while a replay of their requests could still be
/// inside the window. Bounded: past [`MAX_TOMBSTONES`] the ones out of the window go, and if
/// that is not enough all go and `floor` rises to the greatest stamp dropped, so a request for
/// an absent instance must be newer than everything forgotten.
#[derive(Default)]
pub(super) struct Tombstones {
    removed: HashMap<(Arc<str>, InstanceId), Tomb>,
    /// Signed requests for an instance that is neither present nor here must have a greater
    /// stamp. Raised at start-up to the start time (what an earlier run applied is not
    /// remembered), and when tombstones are dropped for room.
    floor: u64,
    /// The highest window floor seen with a request: tombstones below it are out of the window.
    window_floor: u64,
}

#[derive(Debug, Clone, Copy)]
struct Tomb {
    stamp: u64,
    /// The version of the removal, when a signed deregister with this stamp made it.
    removed_at: Option<u64>,
}

/// Tombstones kept at most; a few MB.
pub const MAX_TOMBSTONES: usize = 65_536;

impl Tombstones {
    /// Requests for absent instances must have a stamp above `floor` from now on.
    pub(super) fn raise_floor(&mut self, floor: u64) {
        self.floor = self.floor.max(floor);
    }

    /// The floor requests for absent instances must pass.
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Remembers that `instance` left, by a deregister of stamp `by` at version `version`, or
    /// otherwise (`by` is `None`: expiry, another node, a replacement's removal).
    pub(super) fn record(&mut self, instance: &Instance, by: Option<(u64, u64)>) {
        let stamp = instance.stamp().max(by.map_or(0, |(stamp, _)| stamp));
        if stamp == 0 {
            return;
        }
        let tomb = Tomb {
            stamp,
            removed_at: by.filter(|(s, _)| *s == stamp).map(|(_, v)| v),
        };
        self.removed
            .insert((instance.service.clone(), instance.id.clone()), tomb);
        if self.removed.len() > MAX_TOMBSTONES {
            let window_floor = self.window_floor;
            self.removed.retain(|_, tomb| tomb.stamp >= window_floor);
            if self.removed.len() > MAX_TOMBSTONES / 2 {
                let newest = self.removed.values().map(|t| t.stamp).max().unwrap_or(0);
                self.floor = self.floor.max(newest);
                self.removed.clear();
            }
        }
    }

    /// Forgets the tombstone of `service`/`id` (it is present again).
    pub(super) fn revive(&mut self, service: &str, id: &str) {
        if !self.removed.is_empty() {
            self.removed
                .remove(&(Arc::<str>::from(service), InstanceId::new(id)));
        }
    }

    /// Decides a request for `service`/`id`, now `current` (`None`: absent).
    pub(super) fn admit(
        &mut self,
        service: &str,
        id: &str,
        current: Option<&Instance>,
        origin: &Origin,
        owners: &Owners,
    ) -> Result<Admission, RegistryError> {
        self.window_floor = self.window_floor.max(origin.floor);
        let replayed = || RegistryError::Replayed {
            service: service.to_string(),
            id: id.to_string(),
        };
        match current {
            Some(instance) if !origin.is_signed() => match owners.name(instance.owner()) {
                Some(owner) => Err(RegistryError::Owned {
                    service: service.to_string(),
                    id: id.to_string(),
                    owner: owner.to_string(),
                }),
                None => Ok(Admission::Apply),
            },
            Some(instance) => {
                let last = instance.stamp();
                if origin.stamp > last {
                    Ok(Admission::Apply)
                } else if origin.stamp == last {
                    Ok(Admission::Repeat { removed_at: None })
                } else {
                    Err(replayed())
                }
            }
            None if !origin.is_signed() => Ok(Admission::Apply),
            None => {
                let key = (Arc::<str>::from(service), InstanceId::new(id));
                match self.removed.get(&key) {
                    Some(tomb) if origin.stamp > tomb.stamp => Ok(Admission::Apply),
                    Some(tomb) if origin.stamp == tomb.stamp && tomb.removed_at.is_some() => {
                        Ok(Admission::Repeat {
                            removed_at: tomb.removed_at,
                        })
                    }
                    Some(_) => Err(replayed()),
                    None if origin.stamp > self.floor => Ok(Admission::Apply),
                    None => Err(replayed()),
                }
            }
        }
    }
}
