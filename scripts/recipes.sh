# The training recipes the GPU plan (gpu_finish.sh) and the CPU sweep (cpu_sweep.sh) share, so
# that the two sweeps train the same trials under the same schedule. Sourced, not run.
#
# The Bengio sweep: the factors around the shipped configuration, and the step budget and
# schedule of the shipped bengio (17,564 steps of 16 x 128 tokens, cosine to the end).
BENGIO_VARY=(--vary context=4,12 --vary d_hidden=512,2048 --vary direct=False --vary dropout=0.4)
BENGIO_STEPS=17500
# The seed model at another context: the shipped seed's recipe (2,048 tokens a step, dropout 0.1).
SEED_STEPS=16285

# bengio_train_args STEPS: the train arguments of every trial, into TRAIN_ARGS.
bengio_train_args() {
  TRAIN_ARGS=(--batch-size 16 --max-steps "$1" --warmup-steps 200 --eval-interval 750
    --log-interval 50)
}

# seed_train_args CONTEXT STEPS: the seed model's overrides and train arguments, into SEED_ARGS.
seed_train_args() {
  SEED_ARGS=(--set "context=$1" --set dropout=0.1 --batch-size $((2048 / $1)) --max-steps "$2"
    --warmup-steps 200 --eval-interval 750 --log-interval 50)
}

# evaluate_seed PYTHON RUN DATA: the three evaluations a shipped card needs (validation and test
# in float32, test with float16-rounded weights), of RUN/best, into RUN/eval-SPLIT-STORAGE.json.
evaluate_seed() {
  local split_storage split storage
  for split_storage in validation:float32 test:float32 test:float16; do
    split=${split_storage%:*} storage=${split_storage#*:}
    "$1" -m training evaluate "$2/best" --data "$3" --split "$split" --storage "$storage" \
      --json "$2/eval-$split-$storage.json" > /dev/null
  done
}
