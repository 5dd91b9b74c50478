//! The few DNS messages the gateway reads and writes, through
//! `simple-dns`: a guest's query (its one question), the refusal of a
//! name, the address records of an upstream answer, and the host's own
//! `A` query. Guests' bytes and upstream answers are parsed, never
//! trusted: whatever does not parse is dropped.

use std::net::Ipv4Addr;

use simple_dns::rdata::RData;
use simple_dns::{CLASS, Name, OPCODE, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};

/// A guest's query: what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query {
    /// The message id.
    pub id: u16,
    /// The name asked about, lower case without the trailing dot.
    pub name: String,
}

/// The query in `bytes`, if it is a standard query with one question.
pub(crate) fn parse_query(bytes: &[u8]) -> Option<Query> {
    let packet = Packet::parse(bytes).ok()?;
    if packet.has_flags(PacketFlag::RESPONSE)
        || packet.opcode() != OPCODE::StandardQuery
        || packet.questions.len() != 1
    {
        return None;
    }
    let name = packet.questions[0].qname.to_string().to_ascii_lowercase();
    Some(Query {
        id: packet.id(),
        name: name.strip_suffix('.').unwrap_or(&name).to_owned(),
    })
}

/// The answer "no such name" to the query in `bytes`: what a guest gets
/// for a name its policy does not allow, so that it fails at once instead
/// of timing out.
pub(crate) fn no_such_name(bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Packet::parse(bytes).ok()?;
    let mut reply = Packet::new_reply(query.id());
    if query.has_flags(PacketFlag::RECURSION_DESIRED) {
        reply.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    *reply.rcode_mut() = RCODE::NameError;
    reply.questions = query
        .questions
        .into_iter()
        .map(Question::into_owned)
        .collect();
    reply.build_bytes_vec().ok()
}

/// Whether `response` answers `query`: the same id and the same question,
/// so an answer from anyone but the upstream (or to another question)
/// is not taken.
pub(crate) fn answers(response: &[u8], query: &[u8]) -> bool {
    let (Ok(response), Ok(query)) = (Packet::parse(response), Packet::parse(query)) else {
        return false;
    };
    response.has_flags(PacketFlag::RESPONSE)
        && response.id() == query.id()
        && response.questions.len() == query.questions.len()
        && response
            .questions
            .iter()
            .zip(&query.questions)
            .all(|(a, b)| {
                a.qtype == b.qtype
                    && a.qname.to_string().eq_ignore_ascii_case(&b.qname.to_string())
            })
}

/// Whether the response was cut short (the guest then asks over TCP).
pub(crate) fn truncated(response: &[u8]) -> bool {
    Packet::parse(response).is_ok_and(|p| p.has_flags(PacketFlag::TRUNCATION))
}

/// The IPv4 addresses in the answer section, with their TTLs: the
/// addresses a guest may connect to after asking for an allowed name
/// (whatever CNAMEs led to them).
pub(crate) fn addresses(response: &[u8]) -> Vec<(Ipv4Addr, u32)> {
    let Ok(packet) = Packet::parse(response) else {
        return Vec::new();
    };
    if packet.rcode() != RCODE::NoError {
        return Vec::new();
    }
    packet
        .answers
        .iter()
        .filter_map(|record| match &record.rdata {
            RData::A(a) => Some((Ipv4Addr::from(a.address), record.ttl)),
            _ => None,
        })
        .collect()
}

/// A recursive `A` query for `name`.
pub(crate) fn a_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut query = Packet::new_query(id);
    query.set_flags(PacketFlag::RECURSION_DESIRED);
    query.questions.push(Question::new(
        Name::new(name).ok()?,
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    query.build_bytes_vec().ok()
}

#[cfg(any(test, feature = "test-internals"))]
pub mod testing {
    //! A DNS answer for tests: what a test's upstream server sends.

    use super::*;
    use simple_dns::ResourceRecord;
    use simple_dns::rdata::A;

    /// The answer to `query` with these `A` records for its name (no
    /// such name when there are none).
    pub fn answer(query: &[u8], records: &[(Ipv4Addr, u32)]) -> Option<Vec<u8>> {
        let query = Packet::parse(query).ok()?;
        let mut reply = Packet::new_reply(query.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        let question = query.questions.first()?.clone().into_owned();
        if records.is_empty() {
            *reply.rcode_mut() = RCODE::NameError;
        }
        for (ip, ttl) in records {
            reply.answers.push(ResourceRecord::new(
                question.qname.clone(),
                CLASS::IN,
                *ttl,
                RData::A(A {
                    address: u32::from(*ip),
                }),
            ));
        }
        reply.questions.push(question);
        reply.build_bytes_vec().ok()
    }

    /// The name a query asks for.
    pub fn asked(query: &[u8]) -> Option<String> {
        super::parse_query(query).map(|q| q.name)
    }

    /// A recursive `A` query for `name` with id `id`.
    pub fn query(id: u16, name: &str) -> Vec<u8> {
        super::a_query(id, name).unwrap_or_default()
    }

    /// Whether `response` answers `query`.
    pub fn answers(response: &[u8], query: &[u8]) -> bool {
        super::answers(response, query)
    }

    /// The addresses and TTLs a response carries (none for "no such
    /// name").
    pub fn addresses(response: &[u8]) -> Vec<(Ipv4Addr, u32)> {
        super::addresses(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_round_trips_and_answers_carry_their_addresses() {
        let query = a_query(7, "Files.PyPI.org").unwrap();
        assert_eq!(
            parse_query(&query),
            Some(Query {
                id: 7,
                name: "files.pypi.org".into()
            })
        );
        let ip = Ipv4Addr::new(203, 0, 113, 5);
        let answer = testing::answer(&query, &[(ip, 30)]).unwrap();
        assert!(answers(&answer, &query));
        assert_eq!(addresses(&answer), vec![(ip, 30)]);
        assert!(!answers(&answer, &a_query(8, "files.pypi.org").unwrap()));
        assert!(!answers(&answer, &a_query(7, "pypi.org").unwrap()));
        // A response is not a query.
        assert_eq!(parse_query(&answer), None);

        let refused = no_such_name(&query).unwrap();
        assert!(answers(&refused, &query));
        assert_eq!(addresses(&refused), vec![]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_read_without_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_query(&bytes);
            let _ = no_such_name(&bytes);
            let _ = addresses(&bytes);
            let _ = truncated(&bytes);
            let _ = answers(&bytes, &bytes);
        }
    }
}
