//! InvokeAI's `--free_gpu_mem`: the weights stay in host memory and each network is put on the
//! device only for its stage of a generation (text encoder, then UNet, then VAE), the one
//! before it released, so that the device holds one network at a time.
//!
//! Every network of a [`crate::StableDiffusion`] is a [`Staged`] network, built from its weights
//! by the device the first time a stage asks for it. Networks that share a [`DeviceSlot`] evict
//! each other; a network with a slot of its own stays loaded once built, which is the ordinary
//! (resident) way.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Result};
use candle_nn::VarBuilder;
use dream_models::clip::{ClipTextModelWithProjection, ClipTextTransformer};
use dream_models::layers::PaddingMode;
use dream_models::unet::UNet2DConditionModel;
use dream_models::vae::AutoencoderKL;
use dream_models::weights::Component;

/// A network a [`Staged`] holds: it can be rebuilt at any time, so settings made after loading
/// are replayed on each build.
pub(crate) trait Network: Send + Sync + 'static {
    /// Switches the padding of its convolutions (seamless tiling); networks without padded
    /// convolutions ignore it.
    fn set_padding_mode(&self, _mode: PaddingMode) {}
}

impl Network for ClipTextTransformer {}

impl Network for ClipTextModelWithProjection {}

impl Network for UNet2DConditionModel {
    fn set_padding_mode(&self, mode: PaddingMode) {
        UNet2DConditionModel::set_padding_mode(self, mode);
    }
}

impl Network for AutoencoderKL {
    fn set_padding_mode(&self, mode: PaddingMode) {
        AutoencoderKL::set_padding_mode(self, mode);
    }
}

/// Which network the device holds, shared by the networks that take turns on it.
#[derive(Default)]
pub(crate) struct DeviceSlot(Mutex<Option<Loaded>>);

/// A built network and the [`Staged`] it belongs to.
struct Loaded {
    owner: usize,
    network: Arc<dyn Any + Send + Sync>,
}

impl DeviceSlot {
    fn lock(&self) -> MutexGuard<'_, Option<Loaded>> {
        // A panic while building leaves the slot empty or holding a whole network.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

type Builder<T> = Box<dyn Fn(&Device) -> Result<T> + Send + Sync>;

/// One network, built on `device` when a stage needs it.
pub(crate) struct Staged<T> {
    /// Tells this network's build apart from the others' in a shared slot.
    id: usize,
    name: &'static str,
    /// The dtype it is built in.
    dtype: DType,
    build: Builder<T>,
    device: Device,
    slot: Arc<DeviceSlot>,
    padding: Mutex<PaddingMode>,
}

impl<T: Network> Staged<T> {
    /// A network that takes turns on the device with the others of `slot`, or, given a slot of
    /// its own, stays loaded once built.
    pub(crate) fn new(
        name: &'static str,
        dtype: DType,
        device: &Device,
        slot: Arc<DeviceSlot>,
        build: impl Fn(&Device) -> Result<T> + Send + Sync + 'static,
    ) -> Self {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        Staged {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            dtype,
            build: Box::new(build),
            device: device.clone(),
            slot,
            padding: Mutex::new(PaddingMode::default()),
        }
    }

    /// The network `new` makes from `component`'s weights in `dtype`.
    pub(crate) fn of<C: Clone + Send + Sync + 'static>(
        name: &'static str,
        component: &Component<C>,
        dtype: DType,
        device: &Device,
        slot: Arc<DeviceSlot>,
        new: fn(VarBuilder, &C) -> Result<T>,
    ) -> Self {
        let (weights, config) = (component.weights.clone(), component.config.clone());
        Staged::new(name, dtype, device, slot, move |device| {
            new(weights.var_builder(dtype, device), &config)
        })
    }

    /// The network on the device, built there (and whatever network the device held released)
    /// if it is not already.
    pub(crate) fn get(&self) -> Result<Arc<T>> {
        let mut slot = self.slot.lock();
        if let Some(loaded) = slot.as_ref().filter(|l| l.owner == self.id) {
            let network = Arc::clone(&loaded.network);
            return Ok(network
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("a slot holds its owner's network type")));
        }
        // Release the previous network before building, so both are never on the device.
        *slot = None;
        let network = Arc::new((self.build)(&self.device)?);
        network.set_padding_mode(*self.padding.lock().unwrap_or_else(|p| p.into_inner()));
        *slot = Some(Loaded {
            owner: self.id,
            network: Arc::clone(&network) as Arc<dyn Any + Send + Sync>,
        });
        Ok(network)
    }

    /// Whether the network is on the device now.
    pub(crate) fn is_loaded(&self) -> bool {
        self.slot
            .lock()
            .as_ref()
            .is_some_and(|l| l.owner == self.id)
    }

    /// Frees the device's copy, if it holds this network.
    pub(crate) fn release(&self) {
        let mut slot = self.slot.lock();
        if slot.as_ref().is_some_and(|l| l.owner == self.id) {
            *slot = None;
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// Sets the padding mode of the network now and of every later build.
    pub(crate) fn set_padding_mode(&self, mode: PaddingMode) {
        *self.padding.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        let slot = self.slot.lock();
        if let Some(loaded) = slot.as_ref().filter(|l| l.owner == self.id) {
            if let Some(network) = loaded.network.downcast_ref::<T>() {
                network.set_padding_mode(mode);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counted;
    impl Network for Counted {}

    fn counted(slot: &Arc<DeviceSlot>, builds: &Arc<AtomicUsize>) -> Staged<Counted> {
        let builds = Arc::clone(builds);
        Staged::new(
            "counted",
            DType::F32,
            &Device::Cpu,
            Arc::clone(slot),
            move |_| {
                builds.fetch_add(1, Ordering::SeqCst);
                Ok(Counted)
            },
        )
    }

    #[test]
    fn a_slot_of_its_own_keeps_the_network_loaded() {
        let builds = Arc::new(AtomicUsize::new(0));
        let network = counted(&Arc::default(), &builds);
        assert!(!network.is_loaded());
        for _ in 0..3 {
            network.get().unwrap();
        }
        assert!(network.is_loaded());
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn networks_sharing_a_slot_take_turns() {
        let slot = Arc::default();
        let (a_builds, b_builds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, b) = (counted(&slot, &a_builds), counted(&slot, &b_builds));
        a.get().unwrap();
        a.get().unwrap();
        assert!(a.is_loaded() && !b.is_loaded());
        b.get().unwrap();
        assert!(!a.is_loaded() && b.is_loaded());
        a.get().unwrap();
        assert_eq!(
            (
                a_builds.load(Ordering::SeqCst),
                b_builds.load(Ordering::SeqCst)
            ),
            (2, 1)
        );
        a.release();
        assert!(!a.is_loaded() && !b.is_loaded());
    }

    #[test]
    fn a_failed_build_leaves_the_slot_empty() {
        let slot: Arc<DeviceSlot> = Arc::default();
        let good = counted(&slot, &Arc::new(AtomicUsize::new(0)));
        good.get().unwrap();
        let bad =
            Staged::<Counted>::new("bad", DType::F32, &Device::Cpu, Arc::clone(&slot), |_| {
                candle_core::bail!("no weights")
            });
        assert!(bad.get().is_err());
        assert!(!good.is_loaded() && !bad.is_loaded());
    }
}
