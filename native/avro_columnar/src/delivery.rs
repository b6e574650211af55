//! The collector's delivery reports, counted without running Python for each one.
//!
//! librdkafka reports every message it delivers; confluent-kafka calls the message's callback
//! for each. At 100,000 events/s a Python callback (a lock for the buffered bytes, one for the
//! latency histogram, the bucket search) cost more CPU than producing the message. This one
//! counts an acknowledged message (its bytes, its produce latency in the same buckets as
//! `eventplatform.collect.metrics`) in native code and hands every failed one to the Python
//! callback it was made with, which keeps, journals or logs it exactly as before.

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;

/// A delivery callback for `Producer.produce_batch` / `produce`: acknowledged messages are
/// counted here, failed ones go to `on_error(err, msg)`.
///
/// Callbacks run with the GIL held (whichever thread polls the producer), so the counters
/// never see two reports at once; they are atomics only because a frozen class must be Sync.
#[pyclass(frozen, module = "eventplatform_avro")]
pub struct DeliveryTally {
    bounds: Vec<f64>,
    /// one per bound, then the one over every bound (+Inf)
    buckets: Vec<AtomicU64>,
    /// the latencies' sum in seconds, as f64 bits
    latency_sum: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    on_error: PyObject,
}

#[pymethods]
impl DeliveryTally {
    /// `bounds`: the latency histogram's upper bounds in seconds, ascending; `on_error`: called
    /// with `(err, msg)` for each message not delivered.
    #[new]
    fn new(bounds: Vec<f64>, on_error: PyObject) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        DeliveryTally {
            bounds,
            buckets,
            latency_sum: AtomicU64::new(0f64.to_bits()),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            on_error,
        }
    }

    /// One delivery report: `err` None for an acknowledged message.
    fn __call__(
        &self,
        py: Python<'_>,
        err: &Bound<'_, PyAny>,
        msg: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if !err.is_none() {
            self.on_error.call1(py, (err, msg))?;
            return Ok(());
        }
        let size = msg.len()? as u64;
        // Message.latency(): seconds since produce, or None when librdkafka has none
        let latency: Option<f64> = msg.call_method0(pyo3::intern!(py, "latency"))?.extract()?;
        let seconds = latency.unwrap_or(0.0);
        let slot = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let sum = f64::from_bits(self.latency_sum.load(Ordering::Relaxed)) + seconds;
        self.latency_sum.store(sum.to_bits(), Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    /// Bytes (message values) acknowledged so far.
    #[getter]
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Messages acknowledged so far.
    #[getter]
    fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// The latency histogram so far: (count per bucket, the last one +Inf; sum in seconds).
    fn latency(&self) -> (Vec<u64>, f64) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        (counts, f64::from_bits(self.latency_sum.load(Ordering::Relaxed)))
    }
}
