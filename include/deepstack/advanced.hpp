// deepstack/advanced.hpp - the layer under the Engine, for programs that need more than a reply:
// the loaded model and its configuration, sessions (a KV cache prefilled with token ids and
// decoded one token at a time, returning raw logits), traces of the intermediate tensors of a
// forward pass, prepared visual inputs and their M-RoPE positions, chat prompts, the sampler and
// decode loop, the tokenizer, video reading and safetensors files. deepstack-golden and
// deepstack-tokenize are written on it. These are the engine's own types (namespace
// deepstack::detail) named here one by one; unlike the Engine face they may change between
// versions.
#pragma once
#include "engine.hpp"

namespace deepstack::advanced {

// Loading: a model folder with its configuration and weights.
using detail::FusionConfig;
using detail::LoadOptions;
using detail::Model;
using detail::ModelConfig;
using detail::WeightFormat;

// The SIMD level the kernels run at (chosen at run time).
using detail::active_isa;
using detail::isa_name;

// Limits the engine checks its inputs against (thread counts, preprocessor pixel budgets).
using detail::kMaxProcessorPixels;
using detail::kMaxThreads;

// Visual inputs: preprocessed images and videos, their prompt blocks and M-RoPE positions.
using detail::PixelBudget;
using detail::Positions;
using detail::VideoClip;
using detail::VisualInput;
using detail::VisualPatches;
using detail::load_video;
using detail::mrope_positions;
using detail::prepare_image;
using detail::prepare_video;
using detail::visual_blocks;

// Sessions: prefill and decode with raw logits; Trace receives every named intermediate tensor.
using detail::Session;
using detail::Trace;

// Chat prompts, sampling and the decode loop over a Session.
using detail::Conversation;
using detail::GenerateResult;
using detail::Message;
using detail::Sampler;
using detail::SamplingParams;
using detail::build_prompt_ids;
using detail::kMaxPenalty;
using detail::kMaxTemperature;
using detail::generate;
using detail::image_part;
using detail::load_generation_config;
using detail::text_part;
using detail::video_part;

// The tokenizer (Hugging Face tokenizer.json).
using detail::StreamDecoder;
using detail::Tokenizer;

// safetensors files and JSON files with errors that name them.
using detail::DType;
using detail::TensorBlob;
using detail::TensorInfo;
using detail::WeightStore;
using detail::make_blob;
using detail::read_json_file;
using detail::read_small_file;
using detail::shape_str;
using detail::write_safetensors;

}  // namespace deepstack::advanced
