//! The sessions mart's grouping, in one pass over a day's events instead of DuckDB's join of
//! every event to its user's visits and hash aggregate of string arg_min/arg_max.
//!
//! `sql/marts/sessions_daily.sql` is the mart's definition and the reference a test compares
//! this with. A session is (customer_id, session_id) when the event has a session_id, else a
//! visit of (customer_id, user_id): the user's events by time, cut where two in a row are 30
//! minutes or more apart, numbered from 1. Sessions are then grouped by their key text as the
//! SQL does (`session_id`, or `user_id#n`): a session_id that reads like a visit's key joins
//! that visit, exactly as in SQL.
//!
//! The output is row numbers and figures, not strings: for each session, the row whose
//! customer_id and session_id (or user_id) make its key, the rows whose values the mart shows
//! (smallest user_id, first URL, ...) and its times and counts. Python takes the strings from
//! the columns it already holds. Ties in time go to the earlier row.

use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Bits of a row's flags (computed by the query that reads the day).
pub const HAS_URL: u8 = 1;
pub const HAS_UTM_SOURCE: u8 = 2;
pub const HAS_REFERRER_CLASS: u8 = 4;
pub const HAS_COUNTRY: u8 = 8;
pub const HAS_DEVICE_CLASS: u8 = 16;
pub const PAGE_VIEW: u8 = 32;

/// Figures per session, in this order, in the output (i64 each).
pub const OUTPUT_WIDTH: usize = 13;

/// An Arrow string column (int32 offsets) as raw slices.
#[derive(Clone, Copy)]
pub struct Strings<'a> {
    pub offsets: &'a [i32],
    pub data: &'a [u8],
    pub validity: Option<&'a [u8]>,
    pub offset: usize,
}

impl<'a> Strings<'a> {
    #[inline]
    fn get(&self, row: usize) -> Option<&'a [u8]> {
        let i = row + self.offset;
        if let Some(bits) = self.validity {
            if (bits[i >> 3] >> (i & 7)) & 1 == 0 {
                return None;
            }
        }
        let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        Some(&self.data[start..end])
    }
}

/// The time and row of a value picked by the earliest (or latest) time; row -1: none yet.
#[derive(Clone, Copy)]
struct Pick {
    ts: i64,
    row: i64,
}

impl Pick {
    const NONE: Pick = Pick { ts: 0, row: -1 };

    #[inline]
    fn earliest(&mut self, ts: i64, row: i64) {
        if self.row < 0 || ts < self.ts || (ts == self.ts && row < self.row) {
            *self = Pick { ts, row };
        }
    }

    #[inline]
    fn latest(&mut self, ts: i64, row: i64) {
        if self.row < 0 || ts > self.ts || (ts == self.ts && row < self.row) {
            *self = Pick { ts, row };
        }
    }

    fn merge_earliest(&mut self, other: Pick) {
        if other.row >= 0 {
            self.earliest(other.ts, other.row);
        }
    }

    fn merge_latest(&mut self, other: Pick) {
        if other.row >= 0 {
            self.latest(other.ts, other.row);
        }
    }
}

/// One session's running figures.
#[derive(Clone, Copy)]
struct Session {
    customer: u32, // its number in the run's list of customers
    key_row: i64,
    visit: i64, // 0: keyed by session_id
    user_row: i64,
    user_hash: u64, // the user_row's user, hashed (0: none yet or a visit)
    min_ts: i64,
    max_ts: i64,
    events: i64,
    pages: i64,
    entry_page: Pick,
    entry_any: Pick,
    exit_page: Pick,
    exit_any: Pick,
    firsts: [Pick; 4], // utm_source, referrer_class, country, device_class
}

impl Session {
    fn new(customer: u32, key_row: i64, visit: i64) -> Session {
        Session {
            customer,
            key_row,
            visit,
            user_row: -1,
            user_hash: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            events: 0,
            pages: 0,
            entry_page: Pick::NONE,
            entry_any: Pick::NONE,
            exit_page: Pick::NONE,
            exit_any: Pick::NONE,
            firsts: [Pick::NONE; 4],
        }
    }

    #[inline]
    fn add_figures(&mut self, row: usize, ts: i64, flags: u8) {
        let r = row as i64;
        self.events += 1;
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        let page = flags & PAGE_VIEW != 0;
        if page {
            self.pages += 1;
        }
        if flags & HAS_URL != 0 {
            self.entry_any.earliest(ts, r);
            self.exit_any.latest(ts, r);
            if page {
                self.entry_page.earliest(ts, r);
                self.exit_page.latest(ts, r);
            }
        }
        for (k, bit) in [
            HAS_UTM_SOURCE,
            HAS_REFERRER_CLASS,
            HAS_COUNTRY,
            HAS_DEVICE_CLASS,
        ]
        .iter()
        .enumerate()
        {
            if flags & bit != 0 {
                self.firsts[k].earliest(ts, r);
            }
        }
    }

    #[inline]
    fn smaller_user(&mut self, row: i64, user: &Strings) {
        if row < 0 {
            return;
        }
        if let Some(candidate) = user.get(row as usize) {
            let smaller = self.user_row < 0
                || match candidate.cmp(user.get(self.user_row as usize).unwrap_or(&[])) {
                    Ordering::Less => true,
                    Ordering::Equal => row < self.user_row,
                    Ordering::Greater => false,
                };
            if smaller {
                self.user_row = row;
            }
        }
    }

    fn merge(&mut self, other: &Session, user: &Strings) {
        self.events += other.events;
        self.pages += other.pages;
        self.min_ts = self.min_ts.min(other.min_ts);
        self.max_ts = self.max_ts.max(other.max_ts);
        self.entry_page.merge_earliest(other.entry_page);
        self.entry_any.merge_earliest(other.entry_any);
        self.exit_page.merge_latest(other.exit_page);
        self.exit_any.merge_latest(other.exit_any);
        for k in 0..4 {
            self.firsts[k].merge_earliest(other.firsts[k]);
        }
        self.smaller_user(other.user_row, user);
    }

    /// Its `OUTPUT_WIDTH` figures, little-endian, as the buffer Python reads them.
    fn output(&self, out: &mut Vec<u8>) {
        let pick = |preferred: Pick, fallback: Pick| {
            if preferred.row >= 0 {
                preferred.row
            } else {
                fallback.row
            }
        };
        for figure in [
            self.key_row,
            self.visit,
            self.user_row,
            self.min_ts,
            self.max_ts,
            self.events,
            self.pages,
            pick(self.entry_page, self.entry_any),
            pick(self.exit_page, self.exit_any),
            self.firsts[0].row,
            self.firsts[1].row,
            self.firsts[2].row,
            self.firsts[3].row,
        ] {
            out.extend_from_slice(&figure.to_le_bytes());
        }
    }
}

/// One event as grouping needs it, kept in its partition so that grouping reads no string:
/// its group is known by a 128-bit keyed hash of (customer_id, session_id or user_id), its
/// user by another (SipHash-1-3 with a random key: a chance of two groups taken for one of
/// about 10^-25 for a day of ten million events, and no customer can aim for it).
#[derive(Clone, Copy)]
struct Event {
    group: (u64, u64),
    customer: u32,
    user: u64,
    ts: i64,
    row: u32,
    flags: u8,
    by_session: bool,
}

/// Rows are grouped in partitions by hash, so each partition's hash map and sessions stay in
/// the CPU's caches (a day has a million sessions or more).
const PARTITION_BITS: u32 = 8;

/// The sessions of `rows` events (each with a session_id or a user_id, and a time in ms),
/// sorted by (customer_id, session key) as bytes, `OUTPUT_WIDTH` figures each (see
/// `Session::output`), as little-endian bytes. `gap_ms`: the idle time that starts a new visit.
pub fn sessions(
    rows: usize,
    customer: &Strings,
    session: &Strings,
    user: &Strings,
    ts: &[i64],
    flags: &[u8],
    gap_ms: i64,
) -> Vec<u8> {
    // Each event's group: (customer_id, session_id), or (customer_id, user_id) for a user's
    // events without a session_id, whose visits are cut below.
    let key = SipKey::random();
    let partitions = 1usize << PARTITION_BITS;
    let mut parts: Vec<Vec<Event>> = (0..partitions)
        .map(|_| Vec::with_capacity(rows / partitions + rows / partitions / 8 + 16))
        .collect();
    // Customers by number (a day has few): the hash takes the number, not the name.
    let mut customers: HashMap<&[u8], u32> = HashMap::new();
    let mut names: Vec<&[u8]> = Vec::new();
    let mut last: (&[u8], u32) = (&[], u32::MAX);
    for row in 0..rows {
        let (c, by_session, id) = match key_of(row, customer, session, user) {
            Some(k) => k,
            None => continue,
        };
        if last.1 == u32::MAX || c != last.0 {
            let next = names.len() as u32;
            let number = *customers.entry(c).or_insert(next);
            if number == next {
                names.push(c);
            }
            last = (c, number);
        }
        let group = key.hash128(last.1 as u64 | (by_session as u64) << 32, id);
        let user_hash = match (by_session, user.get(row)) {
            (true, Some(u)) => key.hash128(u.len() as u64, u).0 | 1,
            _ => 0, // a visit's events all have its user
        };
        parts[partition(group.0)].push(Event {
            group,
            customer: last.1,
            user: user_hash,
            ts: ts[row],
            row: row as u32,
            flags: flags[row],
            by_session,
        });
    }
    drop(customers);

    let mut sessions: Vec<Session> = Vec::new();
    let mut groups: HashMap<(u64, u64), u32, BuildHasherDefault<Precomputed>> = HashMap::default();
    let mut user_events: Vec<(u32, i64, u32, u32)> = Vec::new(); // (user group, time, row, customer)
    for part in parts.iter_mut() {
        groups.clear();
        user_events.clear();
        let mut user_groups = 0u32;
        for e in part.iter() {
            let r = e.row as usize;
            if e.by_session {
                let next = sessions.len() as u32;
                let s = *groups.entry(e.group).or_insert(next) as usize;
                if s == sessions.len() {
                    sessions.push(Session::new(e.customer, r as i64, 0));
                }
                let current = &mut sessions[s];
                current.add_figures(r, e.ts, e.flags);
                // min(user_id): the strings are compared only when the user is another
                if e.user != 0 && e.user != current.user_hash {
                    let before = current.user_row;
                    current.smaller_user(r as i64, user);
                    if current.user_row != before {
                        current.user_hash = e.user;
                    }
                }
            } else {
                let g = *groups.entry(e.group).or_insert(u32::MAX - user_groups);
                if g == u32::MAX - user_groups {
                    user_groups += 1;
                }
                user_events.push((g, e.ts, e.row, e.customer));
            }
        }
        *part = Vec::new(); // its memory back before the next

        // A user's events by time, cut into visits.
        user_events.sort_unstable();
        let mut i = 0;
        while i < user_events.len() {
            let group = user_events[i].0;
            let (key_row, customer_number) = (user_events[i].2 as i64, user_events[i].3);
            let mut visit = 0;
            let mut last_ts = i64::MIN;
            while i < user_events.len() && user_events[i].0 == group {
                let (_, t, r, _) = user_events[i];
                if visit == 0 || t - last_ts >= gap_ms {
                    visit += 1;
                    let mut s = Session::new(customer_number, key_row, visit);
                    s.user_row = key_row; // every event of a visit has the same user_id
                    sessions.push(s);
                }
                last_ts = t;
                let s = sessions.len() - 1;
                sessions[s].add_figures(r as usize, t, flags[r as usize]);
                i += 1;
            }
        }
    }
    drop(groups);
    drop(parts);
    sorted_by_key(sessions, &names, session, user)
}

/// A random key for SipHash-1-3 (from the standard library's random hasher seeds).
struct SipKey(u64, u64);

impl SipKey {
    fn random() -> SipKey {
        let word = |n: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(n);
            h.finish()
        };
        SipKey(word(1), word(2))
    }

    /// SipHash-1-3 with its 128-bit output, of `first` (8 bytes, little-endian) then `message`.
    fn hash128(&self, first: u64, message: &[u8]) -> (u64, u64) {
        let mut v = [
            self.0 ^ 0x736f_6d65_7073_6575,
            self.1 ^ 0x646f_7261_6e64_6f6d ^ 0xee,
            self.0 ^ 0x6c79_6765_6e65_7261,
            self.1 ^ 0x7465_6462_7974_6573,
        ];
        v[3] ^= first;
        sip_round(&mut v);
        v[0] ^= first;
        let mut words = message.chunks_exact(8);
        for word in &mut words {
            let m = u64::from_le_bytes([
                word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
            ]);
            v[3] ^= m;
            sip_round(&mut v);
            v[0] ^= m;
        }
        let rest = words.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let m = u64::from_le_bytes(last) | (((message.len() + 8) as u64) << 56);
        v[3] ^= m;
        sip_round(&mut v);
        v[0] ^= m;
        v[2] ^= 0xee;
        for _ in 0..3 {
            sip_round(&mut v);
        }
        let first = v[0] ^ v[1] ^ v[2] ^ v[3];
        v[1] ^= 0xdd;
        for _ in 0..3 {
            sip_round(&mut v);
        }
        (first, v[0] ^ v[1] ^ v[2] ^ v[3])
    }
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// Hands a precomputed hash through: the map's keys are hashes already.
#[derive(Default)]
struct Precomputed(u64);

impl Hasher for Precomputed {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(word);
        }
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 ^= hash;
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[inline]
fn partition(hash: u64) -> usize {
    ((hash >> 32) as usize) & ((1 << PARTITION_BITS) - 1)
}

#[inline]
fn key_of<'a>(
    row: usize,
    customer: &Strings<'a>,
    session: &Strings<'a>,
    user: &Strings<'a>,
) -> Option<(&'a [u8], bool, &'a [u8])> {
    let c = customer.get(row).unwrap_or(&[]);
    match session.get(row) {
        Some(s) => Some((c, true, s)),
        None => user.get(row).map(|u| (c, false, u)),
    }
}

/// The sessions by (customer_id, key text) as SQL orders them; sessions with the same key
/// text are one, as in SQL's GROUP BY (a session_id that reads like a visit's key).
fn sorted_by_key(
    sessions: Vec<Session>,
    names: &[&[u8]],
    session: &Strings,
    user: &Strings,
) -> Vec<u8> {
    // Customers by the rank of their names, so that most comparisons are of integers.
    let mut by_name: Vec<u32> = (0..names.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| names[a as usize].cmp(names[b as usize]));
    let mut rank_of = vec![0u32; names.len()];
    for (rank, &number) in by_name.iter().enumerate() {
        rank_of[number as usize] = rank as u32;
    }
    // Visit keys ("<user_id>#<n>") in one arena; session ids are read where they are.
    let mut arena: Vec<u8> = Vec::new();
    let mut spans: Vec<(usize, usize, bool)> = Vec::with_capacity(sessions.len());
    for s in &sessions {
        let row = s.key_row as usize;
        if s.visit == 0 {
            let id = session.get(row).unwrap_or(&[]);
            let start = id.as_ptr() as usize - session.data.as_ptr() as usize;
            spans.push((start, id.len(), false));
        } else {
            let start = arena.len();
            arena.extend_from_slice(user.get(row).unwrap_or(&[]));
            arena.push(b'#');
            arena.extend_from_slice(s.visit.to_string().as_bytes());
            spans.push((start, arena.len() - start, true));
        }
    }
    let text = |i: u32| -> &[u8] {
        let (start, len, in_arena) = spans[i as usize];
        if in_arena {
            &arena[start..start + len]
        } else {
            &session.data[start..start + len]
        }
    };
    // Sorted by (customer rank, the key's first 16 bytes), then runs that tie on those by
    // the whole key: most of the sort compares integers.
    let mut order: Vec<(u32, u128, u32)> = (0..sessions.len() as u32)
        .map(|i| {
            let rank = rank_of[sessions[i as usize].customer as usize];
            let t = text(i);
            let mut prefix = [0u8; 16];
            let n = t.len().min(16);
            prefix[..n].copy_from_slice(&t[..n]);
            (rank, u128::from_be_bytes(prefix), i)
        })
        .collect();
    order.sort_unstable();
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && order[j].0 == order[i].0 && order[j].1 == order[i].1 {
            j += 1;
        }
        if j - i > 1 {
            order[i..j].sort_unstable_by(|a, b| text(a.2).cmp(text(b.2)).then(a.2.cmp(&b.2)));
        }
        i = j;
    }
    let mut out = Vec::with_capacity(sessions.len() * OUTPUT_WIDTH * 8);
    let mut i = 0;
    while i < order.len() {
        let (rank, prefix, first) = order[i];
        let mut merged = sessions[first as usize];
        let mut j = i + 1;
        while j < order.len()
            && order[j].0 == rank
            && order[j].1 == prefix
            && text(order[j].2) == text(first)
        {
            merged.merge(&sessions[order[j].2 as usize], user);
            j += 1;
        }
        merged.output(&mut out);
        i = j;
    }
    out
}

/// Times in ms since the epoch as text `YYYY-MM-DD HH:MM:SS.mmm` (UTC, 23 bytes each, as
/// DuckDB's strftime '%Y-%m-%d %H:%M:%S.%g' writes them), or None when one is outside years
/// 0000 to 9999 (then DuckDB writes them).
pub fn format_ms(times: &[i64]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(times.len() * 23);
    for &t in times {
        let (days, ms_of_day) = (t.div_euclid(86_400_000), t.rem_euclid(86_400_000));
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return None;
        }
        let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
        let (min, rest) = (rest / 60_000, rest % 60_000);
        let (s, ms) = (rest / 1000, rest % 1000);
        let fields = [(y, 4, b'-'), (m, 2, b'-'), (d, 2, b' '), (h, 2, b':'), (min, 2, b':')];
        for (value, width, separator) in fields.into_iter().chain([(s, 2, b'.'), (ms, 3, 0)]) {
            for k in (0..width).rev() {
                out.push(b'0' + ((value / 10i64.pow(k)) % 10) as u8);
            }
            if separator != 0 {
                out.push(separator);
            }
        }
    }
    Some(out)
}

/// (year, month, day) of a day counted from 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
