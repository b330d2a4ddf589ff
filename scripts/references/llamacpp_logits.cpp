// Logits of a fixed token sequence with llama.cpp, for comparing Lumen's
// quantized matmuls with llama.cpp's on the same GGUF (both quantize the
// activations to 8 bits). Built and run by scripts/references/llamacpp_logits.sh
// against the pinned build from bench/build-llama-cpp.sh. Not part of CI.
//
//   llamacpp_logits MODEL N_THREADS IDS POSITIONS
//
// IDS is a comma-separated list of token ids, fed as-is (no BOS added) at
// positions 0..n-1 of sequence 0, in ONE batch with logits requested for
// every position. POSITIONS is a comma-separated list of the positions to
// print, or "all". CPU only, f32 KV cache, flash attention off.
// Output on stdout, one line per requested position:
//   <position> <logit 0> <logit 1> ... <logit n_vocab-1>
// with each logit printed with %.9g (round-trips float32 exactly).

#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

static std::vector<int> parse_list(const std::string & s) {
    std::vector<int> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        out.push_back(std::atoi(item.c_str()));
    }
    return out;
}

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL N_THREADS IDS POSITIONS\n", argv[0]);
        return 2;
    }
    const int n_threads = std::atoi(argv[2]);
    const std::vector<llama_token> ids = parse_list(argv[3]);
    const int n = (int) ids.size();
    std::vector<int> positions;
    if (std::string(argv[4]) == "all") {
        for (int i = 0; i < n; ++i) {
            positions.push_back(i);
        }
    } else {
        positions = parse_list(argv[4]);
    }
    for (int p : positions) {
        if (p < 0 || p >= n) {
            fprintf(stderr, "position %d out of range [0, %d)\n", p, n);
            return 2;
        }
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(argv[1], model_params);
    if (!model) {
        fprintf(stderr, "unable to load model\n");
        return 1;
    }
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    llama_context_params ctx_params = llama_context_default_params();
    ctx_params.n_ctx = n;
    ctx_params.n_batch = n;
    ctx_params.n_ubatch = n;
    ctx_params.n_threads = n_threads;
    ctx_params.n_threads_batch = n_threads;
    ctx_params.type_k = GGML_TYPE_F32;  // default F16 would round K and V
    ctx_params.type_v = GGML_TYPE_F32;
    ctx_params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;  // plain f32 KQ, softmax, KQV
    ctx_params.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, ctx_params);
    if (!ctx) {
        fprintf(stderr, "failed to create the llama_context\n");
        return 1;
    }

    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = true;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }

    for (int p : positions) {
        const float * logits = llama_get_logits_ith(ctx, p);
        printf("%d", p);
        for (int j = 0; j < n_vocab; ++j) {
            printf(" %.9g", logits[j]);
        }
        printf("\n");
    }

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
