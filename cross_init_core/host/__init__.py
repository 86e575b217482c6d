"""The host layer: the one place that knows ComfyUI internals and works around them.

Every other module of the pack calls ComfyUI through the functions re-exported here, one module per concern:

- `models`: what the MODEL and CLIP are (family, encoders, prediction), and their non-streaming copies when the
  host streams weights (dynamic VRAM);
- `encoding`: the host CLIP with tensor tokens, differentiably (out-of-place CLIP layers), and its layer choice;
- `session`: the training session, which makes the host models differentiable without copying or changing a
  weight and puts every object back on exit;
- `unet`: the UNet's compute dtype, `apply_model`, noise schedule, SDXL conditioning and gradient checkpointing;
- `devices`: the compute device, model sizes, free memory and out-of-memory errors;
- `sampling`: the host sampler and VAE (previews, face latents);
- `progress`: the progress bar, its console switch and Cancel;
- `folders`: model folders, embeddings folders, the output folder and the BPE files;
- `forwards`: the instance-forward patching that the CLIP's out-of-place layers and UNet checkpointing share;
- `lora`: the LoRA stage's layers (attention projections, kohya names), its training forward hooks, and the host's
  own LoRA loader for patched clones (the only module that touches ComfyUI's weight patching).

ComfyUI modules are imported inside the functions that use them, so the pack imports without a host.
"""

from __future__ import annotations

from .devices import compute_device, evaluation_devices, free_device_bytes, out_of_memory_errors, weights_bytes
from .encoding import clip_layer, encode_batch_for_training, encode_conditioning, tokenize
from .folders import (
    clip_tokenizer_folder,
    embedding_directories,
    embedding_file_path,
    input_file_path,
    list_embedding_files,
    list_lora_files,
    lora_directories,
    lora_file_path,
    output_directory,
    register_model_folder,
)
from .lora import AppliedLora, LoraTarget, apply_lora, lora_layers, lora_modules, lora_targets
from .models import (
    check_model_matches_clip,
    encoder_slots,
    hf_tokenizer,
    inner_encoders,
    is_sdxl_model,
    model_context_width,
    prediction_type,
    static_models,
    token_table,
)
from .progress import check_interrupted, console_progress_enabled, progress_reporter
from .sampling import sample, vae_decode, vae_encode
from .session import training_session
from .unet import (
    compute_dtype_size,
    denoised,
    dtype_name,
    num_train_timesteps,
    process_latent_in,
    sdxl_adm,
    sigmas_for_timesteps,
    unet_blocks,
    unet_checkpointing,
    unet_compute_dtype,
    unet_model_channels,
)

__all__ = [
    "AppliedLora", "LoraTarget", "apply_lora", "check_interrupted", "check_model_matches_clip", "clip_layer",
    "clip_tokenizer_folder", "compute_device", "compute_dtype_size", "console_progress_enabled", "denoised",
    "dtype_name", "embedding_directories", "embedding_file_path", "encode_batch_for_training", "encode_conditioning",
    "encoder_slots", "evaluation_devices", "free_device_bytes", "hf_tokenizer", "inner_encoders", "input_file_path",
    "is_sdxl_model", "list_embedding_files", "list_lora_files", "lora_directories", "lora_file_path", "lora_layers",
    "lora_modules", "lora_targets", "model_context_width", "num_train_timesteps", "out_of_memory_errors",
    "output_directory", "prediction_type", "process_latent_in", "progress_reporter", "register_model_folder",
    "sample", "sdxl_adm", "sigmas_for_timesteps", "static_models", "token_table", "tokenize", "training_session",
    "unet_blocks", "unet_checkpointing", "unet_compute_dtype", "unet_model_channels", "vae_decode", "vae_encode",
    "weights_bytes",
]
