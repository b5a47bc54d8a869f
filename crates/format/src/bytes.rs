//! Byte strings as Filespooler stores them: a MessagePack array with one small
//! unsigned integer per byte (written as serde writes any `Vec<u8>`). Readers
//! also accept `bin` and `str`, which other writers may reasonably produce.
//!
//! Everything decoded here is charged to the decode budget (see `budget`)
//! before it is allocated, so a header cannot make a reader allocate more
//! than `MAX_DECODED_SIZE` however its bytes are arranged.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::budget::{charge_block, charge_growth};
use crate::env::EnvVar;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bytes(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor)
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a byte string (array of integers 0-255, bin or str)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Bytes, A::Error> {
        budgeted_seq(seq, |b: u8| b).map(Bytes)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        charge_block::<E>(v.len())?;
        Ok(Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        // Already allocated by the deserializer (not rmp-serde reading a
        // slice, which borrows): charge it all the same.
        charge_block::<E>(v.capacity())?;
        Ok(Bytes(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
        self.visit_bytes(v.as_bytes())
    }
}

/// Collect a sequence into a `Vec<U>`, charging every allocation of the
/// vector to the decode budget first. The vector grows with the elements
/// actually decoded (doubling, but never beyond the announced count), not
/// with the count a file announces, so a lying count costs nothing.
pub(crate) fn budgeted_seq<'de, A, T, U>(
    mut seq: A,
    mut f: impl FnMut(T) -> U,
) -> Result<Vec<U>, A::Error>
where
    A: SeqAccess<'de>,
    T: Deserialize<'de>,
{
    let announced = seq.size_hint();
    let mut out: Vec<U> = Vec::new();
    while let Some(x) = seq.next_element::<T>()? {
        if out.len() == out.capacity() {
            let cap = out.capacity();
            let mut want = cap.saturating_mul(2).max(8);
            if let Some(n) = announced
                && n > cap
            {
                want = want.min(n);
            }
            let add = want - cap;
            charge_growth::<U, A::Error>(cap, add)?;
            out.reserve_exact(add);
        }
        out.push(f(x));
    }
    Ok(out)
}

/// Deserialize a sequence of `T` into `Vec<U>` through `budgeted_seq`.
struct SeqVisitor<T, U, F>(F, PhantomData<fn(T) -> U>);

impl<'de, T, U, F> Visitor<'de> for SeqVisitor<T, U, F>
where
    T: Deserialize<'de>,
    F: FnMut(T) -> U,
{
    type Value = Vec<U>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<U>, A::Error> {
        budgeted_seq(seq, self.0)
    }
}

/// `params`: an array of byte strings.
pub(crate) fn de_params<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    d.deserialize_seq(SeqVisitor(|b: Bytes| b.0, PhantomData))
}

/// `env`: an array of `[name, value]` byte-string pairs.
pub(crate) fn de_env<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EnvVar>, D::Error> {
    d.deserialize_seq(SeqVisitor(|(k, v): (Bytes, Bytes)| (k.0, v.0), PhantomData))
}

/// Bytes written as MessagePack `bin` (compact, for digests, keys and
/// signatures); read from any form `Bytes` accepts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bin(pub(crate) Vec<u8>);

impl Serialize for Bin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BytesVisitor).map(|b| Bin(b.0))
    }
}

/// A UTF-8 string (queue name, digest algorithm), charged to the budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Text(pub(crate) String);

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                charge_block::<E>(v.len())?;
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                charge_block::<E>(v.capacity())?;
                Ok(Text(v))
            }
        }
        d.deserialize_str(V)
    }
}
