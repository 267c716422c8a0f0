//! The model's state after a prompt: the final norm's output for the first
//! token with logits in a decode (the prompt's last token), read as
//! llama.cpp computes it, at no extra cost.
//!
//! That vector is what the model "thinks" of the question before it says
//! anything; a linear read of it tells questions the model knows from those
//! it does not (see `confidence::state`). llama.cpp hands it out only in
//! embedding mode, which computes logits for every prompt token (costly
//! with a large vocabulary), so the hook takes it from the graph instead:
//! `build.rs` links with `--wrap` for ggml-cpu's element-wise product and
//! its RMS norm fused with that product, and the wrappers here note the
//! node llama.cpp names `result_norm` (the final norm's weight product, in
//! llama, gemma, qwen, mistral and most other architectures) while a
//! reading is wanted.
//! llama.cpp marks that node as a graph output, so its buffer still holds
//! the values when the decode returns, and [`in_pass_reading_state`]
//! copies the first row. The node noted is the reading decode's own because
//! every decode in the process that could run meanwhile (the engine's, the
//! embedder's) takes `in_pass`'s lock first. A model whose final norm ends otherwise (a bias
//! added last), or a build without `--wrap` (macOS), reads no state and
//! its confidence does without it.

use super::{in_pass, Pass};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The name llama.cpp gives the final norm's output.
const NODE: &[u8] = b"result_norm\0";

/// Whether the decode in progress should note its `result_norm` node.
static WANTED: AtomicBool = AtomicBool::new(false);
/// The `result_norm` node of the decode in progress, once computed.
static SEEN: AtomicPtr<llama_cpp_sys_2::ggml_tensor> = AtomicPtr::new(std::ptr::null_mut());

/// Stops the reading when a pass ends, even by unwinding.
struct StopReading;

impl Drop for StopReading {
    fn drop(&mut self) {
        WANTED.store(false, Ordering::SeqCst);
        SEEN.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// [`in_pass`], also returning the final norm's output for the decode's
/// first row with logits (the row of the prompt's last token when the
/// batch ends a prompt): one vector of the model's embedding width, or
/// None where the hook could not see it (see the module docs).
pub fn in_pass_reading_state<R>(pass: Pass, decode: impl FnOnce() -> R) -> (R, Option<Vec<f32>>) {
    in_pass(pass, || {
        let _stop = StopReading;
        SEEN.store(std::ptr::null_mut(), Ordering::SeqCst);
        WANTED.store(true, Ordering::SeqCst);
        let r = decode();
        WANTED.store(false, Ordering::SeqCst);
        let node = SEEN.swap(std::ptr::null_mut(), Ordering::SeqCst);
        // SAFETY: a node the hook saw during this decode, which has just
        // returned, inside the pass lock: no other decode has run since,
        // and llama.cpp keeps a graph output's buffer until the next one.
        let state = unsafe { first_row(node) };
        (r, state)
    })
}

/// The first row of an F32 node with contiguous rows; None for a null or
/// other node.
///
/// # Safety
///
/// `node` is null or a live ggml tensor whose data is in host memory.
unsafe fn first_row(node: *const llama_cpp_sys_2::ggml_tensor) -> Option<Vec<f32>> {
    // SAFETY: null or live, as the caller promises.
    let t = unsafe { node.as_ref() }?;
    let width = usize::try_from(t.ne[0]).ok()?;
    let f32_type = t.type_ == llama_cpp_sys_2::GGML_TYPE_F32;
    if !f32_type || t.data.is_null() || width == 0 || t.ne[1] < 1 || t.nb[0] != 4 {
        return None;
    }
    // SAFETY: an F32 tensor with at least one row of `width` contiguous
    // values at `data`.
    let row = unsafe { std::slice::from_raw_parts(t.data.cast::<f32>(), width) };
    row.iter().all(|v| v.is_finite()).then(|| row.to_vec())
}

/// Whether `node` is the final norm's output.
///
/// # Safety
///
/// `node` is a live ggml tensor.
#[cfg(sgemm_wrapped)]
unsafe fn is_result_norm(node: *const llama_cpp_sys_2::ggml_tensor) -> bool {
    // SAFETY: a live tensor, as the caller promises; `name` is a fixed
    // array inside it.
    let name = unsafe { &(*node).name };
    name.len() >= NODE.len()
        && name[..NODE.len()]
            .iter()
            .zip(NODE)
            .all(|(&c, &b)| c as u8 == b)
}

/// Notes `node` if a reading is wanted and it is the final norm's output.
///
/// # Safety
///
/// `node` is a live ggml tensor.
#[cfg(sgemm_wrapped)]
unsafe fn note(node: *mut llama_cpp_sys_2::ggml_tensor) {
    // SAFETY: live, as the caller promises.
    if WANTED.load(Ordering::Relaxed) && unsafe { is_result_norm(node) } {
        SEEN.store(node, Ordering::SeqCst);
    }
}

/// ggml-cpu's element-wise product, which `--wrap` sends here: computes it
/// with ggml's own code, then notes the final norm's node (a norm ggml
/// did not fuse with its weight).
///
/// # Safety
///
/// Called by ggml with a live `ggml_compute_params` and its tensor.
#[cfg(sgemm_wrapped)]
#[no_mangle]
pub unsafe extern "C" fn __wrap_ggml_compute_forward_mul(
    params: *const std::ffi::c_void,
    dst: *mut llama_cpp_sys_2::ggml_tensor,
) {
    // SAFETY: ggml's own arguments, passed on unchanged; then its live node.
    unsafe {
        __real_ggml_compute_forward_mul(params, dst);
        note(dst);
    }
}

/// ggml-cpu's RMS norm fused with the product by its weight (how ggml-cpu
/// computes llama's norms), which `--wrap` sends here: computes it with
/// ggml's own code, then notes the product's node.
///
/// # Safety
///
/// Called by ggml with a live `ggml_compute_params` and its two tensors.
#[cfg(sgemm_wrapped)]
#[no_mangle]
pub unsafe extern "C" fn __wrap_ggml_compute_forward_rms_norm_mul_fused(
    params: *const std::ffi::c_void,
    norm: *mut llama_cpp_sys_2::ggml_tensor,
    product: *mut llama_cpp_sys_2::ggml_tensor,
) {
    // SAFETY: ggml's own arguments, passed on unchanged; then its live node.
    unsafe {
        __real_ggml_compute_forward_rms_norm_mul_fused(params, norm, product);
        note(product);
    }
}

#[cfg(sgemm_wrapped)]
extern "C" {
    /// ggml-cpu's element-wise product, as `--wrap` names it.
    fn __real_ggml_compute_forward_mul(
        params: *const std::ffi::c_void,
        dst: *mut llama_cpp_sys_2::ggml_tensor,
    );
    /// ggml-cpu's fused RMS norm and product, as `--wrap` names it.
    fn __real_ggml_compute_forward_rms_norm_mul_fused(
        params: *const std::ffi::c_void,
        norm: *mut llama_cpp_sys_2::ggml_tensor,
        product: *mut llama_cpp_sys_2::ggml_tensor,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_row_of_an_f32_node_is_read_and_others_are_not() {
        let mut data = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        // SAFETY: ggml_tensor is plain C data; all-zero is a valid value.
        let mut t: llama_cpp_sys_2::ggml_tensor = unsafe { std::mem::zeroed() };
        t.type_ = llama_cpp_sys_2::GGML_TYPE_F32;
        t.ne = [3, 2, 1, 1];
        t.nb = [4, 12, 24, 24];
        t.data = data.as_mut_ptr().cast();
        // SAFETY: `t` views `data`, alive for the calls.
        assert_eq!(unsafe { first_row(&t) }, Some(vec![1.0, 2.0, 3.0]));
        // SAFETY: as above.
        assert_eq!(unsafe { first_row(std::ptr::null()) }, None);
        t.type_ = llama_cpp_sys_2::GGML_TYPE_F16;
        // SAFETY: as above.
        assert_eq!(unsafe { first_row(&t) }, None);
        t.type_ = llama_cpp_sys_2::GGML_TYPE_F32;
        let mut broken = [1.0f32, f32::NAN, 3.0];
        t.data = broken.as_mut_ptr().cast();
        // SAFETY: `t` views `broken`, alive for the call.
        assert_eq!(unsafe { first_row(&t) }, None, "a broken state is no state");
    }

    #[cfg(sgemm_wrapped)]
    #[test]
    fn only_the_final_norm_is_recognised() {
        // SAFETY: as above.
        let mut t: llama_cpp_sys_2::ggml_tensor = unsafe { std::mem::zeroed() };
        for (i, &b) in b"result_norm".iter().enumerate() {
            t.name[i] = b as std::ffi::c_char;
        }
        // SAFETY: a live tensor on the stack.
        assert!(unsafe { is_result_norm(&t) });
        t.name[11] = b'x' as std::ffi::c_char;
        // SAFETY: as above.
        assert!(!unsafe { is_result_norm(&t) }, "result_normx");
    }
}
