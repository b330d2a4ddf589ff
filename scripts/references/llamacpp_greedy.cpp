// Greedy generation with llama.cpp that reports token ids (llama-simple and
// llama-completion only print text). Modelled on llama.cpp's
// examples/simple/simple.cpp; built and run by scripts/references/llamacpp_refs.sh
// against the pinned build from bench/build-llama-cpp.sh. Not part of CI.
//
//   llamacpp_greedy MODEL N_PREDICT N_THREADS PROMPT_FILE
//
// The prompt file is read verbatim and tokenized with special tokens parsed and
// BOS added only if the GGUF asks for it (tokenizer.ggml.add_bos_token).
// Generation stops at an end-of-generation token (not recorded) or after
// N_PREDICT tokens. Output, one item per line, on stdout:
//   add_bos 0|1
//   prompt_ids id id ...
//   generated_ids id id ...
//   generated_hex <hex of the concatenated pieces of generated_ids>
//   stop eog|length

#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void batch_set_tokens(llama_batch_ext * batch, const llama_token * tokens, int32_t n_tokens, llama_pos pos_0) {
    llama_batch_ext_clear(batch);
    for (int32_t i = 0; i < n_tokens; ++i) {
        const int32_t idx = llama_batch_ext_add_token(batch, 0, tokens[i]);
        const llama_pos pos = pos_0 + i;
        llama_batch_ext_set_pos(batch, idx, &pos);
    }
    llama_batch_ext_set_output_logits(batch, n_tokens - 1, true);
}

static void print_ids(const char * name, const std::vector<llama_token> & ids) {
    printf("%s", name);
    for (auto id : ids) {
        printf(" %d", id);
    }
    printf("\n");
}

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL N_PREDICT N_THREADS PROMPT_FILE\n", argv[0]);
        return 2;
    }
    const std::string model_path = argv[1];
    const int n_predict = std::atoi(argv[2]);
    const int n_threads = std::atoi(argv[3]);
    std::string prompt;
    {
        std::ifstream in(argv[4], std::ios::binary);
        if (!in) {
            fprintf(stderr, "cannot read %s\n", argv[4]);
            return 1;
        }
        std::stringstream ss;
        ss << in.rdbuf();
        prompt = ss.str();
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), model_params);
    if (!model) {
        fprintf(stderr, "unable to load model\n");
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const bool add_bos = llama_vocab_get_add_bos(vocab);

    // add_special=true adds BOS/EOS only as the vocab says; parse_special=true.
    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), NULL, 0, true, true);
    std::vector<llama_token> prompt_tokens(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), prompt_tokens.data(), prompt_tokens.size(), true, true) < 0) {
        fprintf(stderr, "failed to tokenize the prompt\n");
        return 1;
    }

    llama_context_params ctx_params = llama_context_default_params();
    ctx_params.n_ctx = n_prompt + n_predict;
    ctx_params.n_batch = n_prompt;
    ctx_params.n_threads = n_threads;
    ctx_params.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, ctx_params);
    if (!ctx) {
        fprintf(stderr, "failed to create the llama_context\n");
        return 1;
    }

    llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());

    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    batch_set_tokens(batch, prompt_tokens.data(), n_prompt, 0);
    int n_tokens = n_prompt;
    int n_pos = 0;

    std::vector<llama_token> generated;
    std::string text;
    const char * stop = "length";
    while ((int) generated.size() < n_predict) {
        if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch)) {
            fprintf(stderr, "failed to eval\n");
            return 1;
        }
        n_pos += n_tokens;
        const llama_token id = llama_sampler_sample(smpl, ctx, -1);
        if (llama_vocab_is_eog(vocab, id)) {
            stop = "eog";
            break;
        }
        generated.push_back(id);
        char buf[256];
        const int n = llama_token_to_piece(vocab, id, buf, sizeof(buf), 0, true);
        if (n < 0) {
            fprintf(stderr, "failed to convert token to piece\n");
            return 1;
        }
        text.append(buf, n);
        batch_set_tokens(batch, &id, 1, n_pos);
        n_tokens = 1;
    }

    printf("add_bos %d\n", add_bos ? 1 : 0);
    print_ids("prompt_ids", prompt_tokens);
    print_ids("generated_ids", generated);
    printf("generated_hex ");
    for (unsigned char c : text) {
        printf("%02x", c);
    }
    printf("\nstop %s\n", stop);

    llama_batch_ext_free(batch);
    llama_sampler_free(smpl);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
