//! The people layer against a relay played by the test: whatever a hostile relay serves
//! (chains that fork from the pinned one, intros signed by strangers' devices, old profiles,
//! handles moved to someone else), nothing is accepted silently.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use ferry_protocol::chain::SealedKey;
use ferry_protocol::epoch::ExchangeSecret;
use ferry_protocol::people::{Intro, IntroBody, Notice, ProfileBody, ProfileKey, SealedProfile};
use ferry_protocol::seal::DataKey;
use ferry_protocol::{
    Chain, ClientFrame, DeviceKey, Link, LinkBody, ServerFrame, SigningKey, UserId, UserKey,
};
use rand_core::OsRng;

use super::{Ask, Book, IdentityChange, People, PeopleEvent};
use crate::error::{ClientError, PeopleError};
use crate::state::Keys;
use crate::trust::Trust;

/// A user: its key, one device, and its chain.
struct Someone {
    key: UserKey,
    device: DeviceKey,
    exchange: ExchangeSecret,
    links: Vec<Link>,
    epoch0: DataKey,
}

impl Someone {
    fn new(name: &str) -> Self {
        let key = UserKey::generate(&mut OsRng);
        let device = DeviceKey::generate(&mut OsRng);
        let exchange = ExchangeSecret::generate(&mut OsRng);
        let mut chain = Chain::new(key.id());
        let mut links = Vec::new();
        let create = LinkBody::Create {
            recovery_exchange: ExchangeSecret::generate(&mut OsRng).public(),
            epoch_key: SealedKey(vec![7; 104]),
        };
        let admit = LinkBody::Admit {
            device: device.id(),
            exchange: exchange.public(),
            name: name.into(),
            created_at: 1,
        };
        for body in [create, admit] {
            let link = chain.sign(body, SigningKey::User(&key));
            chain.apply(&link).unwrap();
            links.push(link);
        }
        Self {
            key,
            device,
            exchange,
            links,
            epoch0: DataKey::generate(&mut OsRng),
        }
    }

    fn id(&self) -> UserId {
        self.key.id()
    }

    fn chain(&self) -> Chain {
        Chain::verify(self.id(), &self.links).unwrap()
    }

    /// Extends the chain with an Admit signed by `signer` (the user key, or its device).
    fn admit_another(&mut self, by_user_key: bool) {
        let chain = self.chain();
        let body = LinkBody::Admit {
            device: DeviceKey::generate(&mut OsRng).id(),
            exchange: ExchangeSecret::generate(&mut OsRng).public(),
            name: "another".into(),
            created_at: 2,
        };
        let signer = if by_user_key {
            SigningKey::User(&self.key)
        } else {
            SigningKey::Device(&self.device)
        };
        self.links.push(chain.sign(body, signer));
    }

    fn profile_key(&self) -> ProfileKey {
        ProfileKey::derive(&self.epoch0)
    }

    /// An intro from this user's device to `to`'s device.
    fn intro_to(&self, to: &Someone, note: &str) -> Intro {
        let body = IntroBody {
            note: note.into(),
            profile_key: self.profile_key(),
        };
        let recipients = [(to.device.id(), to.exchange.public())];
        Intro::seal(
            &mut OsRng,
            self.id(),
            &self.device,
            to.id(),
            &recipients,
            &body,
        )
        .unwrap()
    }

    /// The people layer of this user's device, with its book in `dir`.
    fn people(&self, dir: &std::path::Path) -> People {
        let keys = Arc::new(Keys {
            user: self.id(),
            device: DeviceKey::from_secret_bytes(&self.device.secret_bytes()),
            exchange: ExchangeSecret::from_bytes(self.exchange.bytes()),
        });
        let epochs = BTreeMap::from([(0, DataKey::from_bytes(self.epoch0.bytes()))]);
        let trust = Trust::verify(self.id(), self.links.clone(), epochs).unwrap();
        let book = Arc::new(Mutex::new(Book::load(dir).unwrap()));
        People::new(keys, Arc::new(RwLock::new(trust)), book, self.device.id())
    }
}

/// The relay, as the test makes it behave.
#[derive(Default)]
struct FakeRelay {
    chains: Mutex<HashMap<UserId, Vec<Link>>>,
    profiles: Mutex<HashMap<UserId, SealedProfile>>,
    handles: Mutex<HashMap<String, UserId>>,
}

impl FakeRelay {
    fn serve_chain(&self, user: &Someone) {
        self.chains
            .lock()
            .unwrap()
            .insert(user.id(), user.links.clone());
    }
}

#[async_trait::async_trait]
impl Ask for FakeRelay {
    async fn ask(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        Ok(match frame {
            ClientFrame::UserChainFetch { user, .. } => ServerFrame::UserChainLinks {
                user,
                links: self
                    .chains
                    .lock()
                    .unwrap()
                    .get(&user)
                    .cloned()
                    .unwrap_or_default(),
                more: false,
            },
            ClientFrame::ProfileFetch { user } => ServerFrame::Profile {
                user,
                profile: self.profiles.lock().unwrap().get(&user).cloned(),
            },
            ClientFrame::Whois { handle } => ServerFrame::WhoisResult {
                user: self.handles.lock().unwrap().get(&handle).copied(),
                handle,
            },
            _ => ServerFrame::Done,
        })
    }
}

fn setup() -> (tempfile::TempDir, Someone, Someone, FakeRelay) {
    let relay = FakeRelay::default();
    let (me, alice) = (Someone::new("me"), Someone::new("alice"));
    relay.serve_chain(&me);
    relay.serve_chain(&alice);
    (tempfile::tempdir().unwrap(), me, alice, relay)
}

#[tokio::test]
async fn a_verified_request_is_opened_and_its_profile_key_kept() {
    let (dir, me, alice, relay) = setup();
    let people = me.people(dir.path());
    let intro = Box::new(alice.intro_to(&me, "hi"));
    let event = people
        .on_notice(&relay, Notice::RequestReceived { intro })
        .await
        .unwrap();
    assert_eq!(
        event,
        PeopleEvent::RequestReceived {
            from: alice.id(),
            note: Some("hi".into())
        }
    );
    // The profile key opens Alice's profile, and survives a restart (the book is on disk).
    let profile = ProfileBody {
        display_name: "Alice".into(),
        avatar: None,
    };
    let sealed = profile
        .seal(&mut OsRng, &alice.profile_key(), &alice.id(), 1)
        .unwrap();
    relay.profiles.lock().unwrap().insert(alice.id(), sealed);
    drop(people);
    let people = me.people(dir.path());
    assert_eq!(
        people.profile(&relay, alice.id()).await.unwrap(),
        Some(profile)
    );
}

#[tokio::test]
async fn an_intro_from_a_device_the_senders_chain_does_not_admit_is_unverified() {
    let (dir, me, alice, relay) = setup();
    let people = me.people(dir.path());
    // Someone (the relay, say) signs an intro "from Alice" with a device of its own.
    let mallory = Someone::new("mallory");
    let mut forged = mallory.intro_to(&me, "it's me, Alice");
    forged.from = alice.id();
    let body = IntroBody {
        note: "it's me, Alice".into(),
        profile_key: mallory.profile_key(),
    };
    let forged_properly = Intro::seal(
        &mut OsRng,
        alice.id(),
        &mallory.device,
        me.id(),
        &[(me.device.id(), me.exchange.public())],
        &body,
    )
    .unwrap();
    for intro in [forged, forged_properly] {
        let event = people
            .on_notice(
                &relay,
                Notice::RequestReceived {
                    intro: Box::new(intro),
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(&event, PeopleEvent::Unverified { user, .. } if *user == alice.id()),
            "{event:?}"
        );
    }
    assert!(
        people
            .book
            .lock()
            .unwrap()
            .entries
            .get(&alice.id())
            .is_none_or(|e| e.profile_key.is_none()),
        "nothing of a forged intro is kept"
    );
    // An intro for another user, and an acceptance carrying a third user's intro.
    let bob = Someone::new("bob");
    relay.serve_chain(&bob);
    let for_bob = Box::new(alice.intro_to(&bob, "hi Bob"));
    let event = people
        .on_notice(
            &relay,
            Notice::RequestReceived {
                intro: for_bob.clone(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(event, PeopleEvent::Unverified { .. }), "{event:?}");
    let event = people
        .on_notice(
            &relay,
            Notice::Accepted {
                peer: bob.id(),
                intro: Box::new(alice.intro_to(&me, "")),
            },
        )
        .await
        .unwrap();
    assert!(matches!(event, PeopleEvent::Unverified { .. }), "{event:?}");
}

#[tokio::test]
async fn a_chain_that_does_not_extend_the_pinned_one_is_refused_and_surfaced() {
    let (dir, me, mut alice, relay) = setup();
    let people = me.people(dir.path());
    assert_eq!(people.verify(&relay, alice.id()).await.unwrap().len(), 1);
    // The relay serves another history of Alice's devices: the same user key, but the
    // second link differs (equivocation). Refused, reported, pin kept.
    let forked = {
        let mut chain = Chain::new(alice.id());
        let mut links = vec![alice.links[0].clone()];
        chain.apply(&links[0]).unwrap();
        let other = chain.sign(
            LinkBody::Admit {
                device: DeviceKey::generate(&mut OsRng).id(),
                exchange: [5; 32],
                name: "someone else's".into(),
                created_at: 1,
            },
            SigningKey::User(&alice.key),
        );
        links.push(other);
        links
    };
    relay.chains.lock().unwrap().insert(alice.id(), forked);
    assert!(matches!(
        people.verify(&relay, alice.id()).await,
        Err(ClientError::People(PeopleError::Unverified(_)))
    ));
    assert_eq!(
        people.take_waiting(),
        Some(PeopleEvent::IdentityChanged {
            user: alice.id(),
            change: IdentityChange::ChainMismatch
        })
    );
    // A chain that does not verify at all is refused too.
    let mut broken = alice.links.clone();
    broken[1].signature[0] ^= 1;
    relay.chains.lock().unwrap().insert(alice.id(), broken);
    assert!(people.verify(&relay, alice.id()).await.is_err());
    // The real chain, grown by a device of Alice's: accepted quietly.
    alice.admit_another(false);
    relay.serve_chain(&alice);
    assert_eq!(people.verify(&relay, alice.id()).await.unwrap().len(), 2);
    assert_eq!(people.take_waiting(), None);
    // Grown by a link the user key signed (the recovery key was used): accepted, surfaced.
    alice.admit_another(true);
    relay.serve_chain(&alice);
    assert_eq!(people.verify(&relay, alice.id()).await.unwrap().len(), 3);
    assert_eq!(
        people.take_waiting(),
        Some(PeopleEvent::IdentityChanged {
            user: alice.id(),
            change: IdentityChange::Recovered { seqno: 4 }
        })
    );
    // A relay that shows no chain: unverified, nothing pinned changes.
    relay.chains.lock().unwrap().remove(&alice.id());
    assert!(people.verify(&relay, alice.id()).await.is_err());
}

#[tokio::test]
async fn an_older_profile_than_one_opened_is_refused() {
    let (dir, me, alice, relay) = setup();
    let people = me.people(dir.path());
    let intro = Box::new(alice.intro_to(&me, ""));
    people
        .on_notice(&relay, Notice::RequestReceived { intro })
        .await
        .unwrap();
    let seal = |name: &str, version| {
        ProfileBody {
            display_name: name.into(),
            avatar: None,
        }
        .seal(&mut OsRng, &alice.profile_key(), &alice.id(), version)
        .unwrap()
    };
    relay
        .profiles
        .lock()
        .unwrap()
        .insert(alice.id(), seal("new", 2));
    assert!(people.profile(&relay, alice.id()).await.unwrap().is_some());
    relay
        .profiles
        .lock()
        .unwrap()
        .insert(alice.id(), seal("old", 1));
    assert!(matches!(
        people.profile(&relay, alice.id()).await,
        Err(ClientError::People(PeopleError::Unverified(_)))
    ));
    // Another user's profile served as Alice's does not open.
    let bob = Someone::new("bob");
    let bobs = ProfileBody::default()
        .seal(&mut OsRng, &bob.profile_key(), &bob.id(), 5)
        .unwrap();
    relay.profiles.lock().unwrap().insert(alice.id(), bobs);
    assert!(people.profile(&relay, alice.id()).await.is_err());
}

#[tokio::test]
async fn a_handle_that_now_names_someone_else_is_an_identity_change() {
    let (dir, me, alice, relay) = setup();
    let people = me.people(dir.path());
    relay
        .handles
        .lock()
        .unwrap()
        .insert("alice.07".into(), alice.id());
    people
        .request(&relay, alice.id(), "hi", Some("alice.07".into()))
        .await
        .unwrap();
    assert_eq!(
        people.whois(&relay, "Alice.07").await.unwrap(),
        Some(alice.id())
    );
    assert_eq!(people.take_waiting(), None);
    let impostor = Someone::new("alice");
    relay
        .handles
        .lock()
        .unwrap()
        .insert("alice.07".into(), impostor.id());
    assert_eq!(
        people.whois(&relay, "alice.07").await.unwrap(),
        Some(impostor.id())
    );
    assert_eq!(
        people.take_waiting(),
        Some(PeopleEvent::IdentityChanged {
            user: alice.id(),
            change: IdentityChange::HandleMoved {
                handle: "alice.07".into(),
                now: Some(impostor.id())
            }
        })
    );
}

#[test]
fn presence_is_online_while_any_node_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let me = Someone::new("me");
    let people = me.people(dir.path());
    let bob = UserId([2; 32]);
    let changed = |event: Option<PeopleEvent>| {
        event.map(|e| match e {
            PeopleEvent::PresenceChanged { online, .. } => online,
            other => panic!("{other:?}"),
        })
    };
    assert_eq!(changed(people.on_presence(bob, 1, true, None)), Some(true));
    assert_eq!(changed(people.on_presence(bob, 2, true, None)), None);
    assert_eq!(changed(people.on_presence(bob, 1, false, Some(600))), None);
    assert_eq!(
        changed(people.on_presence(bob, 2, false, Some(900))),
        Some(false)
    );
    // Source 0: every node at once (the contact hid its presence).
    people.on_presence(bob, 1, true, None);
    people.on_presence(bob, 2, true, None);
    assert_eq!(
        changed(people.on_presence(bob, 0, false, None)),
        Some(false)
    );
    // After a reconnect, a contact not heard of again by the catch-up is offline.
    people.on_presence(bob, 3, true, None);
    people.on_session();
    people.expire_presence();
    assert_eq!(changed(people.take_waiting()), Some(false));
    // One heard again is kept.
    people.on_presence(bob, 3, true, None);
    people.on_session();
    people.on_presence(bob, 3, true, None);
    people.expire_presence();
    assert_eq!(people.take_waiting(), None);
}
