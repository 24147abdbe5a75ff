// deepstack.hpp - run DeepStack vision-language models (Qwen3-VL) on a CPU.
// The one header a host includes; it pulls in the modules below.
#pragma once
#include "deepstack/common.hpp"
#include "deepstack/safetensors.hpp"
#include "deepstack/config.hpp"
#include "deepstack/kernels.hpp"
#include "deepstack/image.hpp"
#include "deepstack/rope.hpp"
#include "deepstack/weights.hpp"
#include "deepstack/vision.hpp"
#include "deepstack/text.hpp"
#include "deepstack/fusion.hpp"
#include "deepstack/model.hpp"
#include "deepstack/tokenizer.hpp"
#include "deepstack/generate.hpp"
#include "deepstack/video.hpp"
#include "deepstack/grounding.hpp"
