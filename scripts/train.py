"""Train the from-scratch CNN on FER2013 (the data prepared by preprocess.py).

The network (expressions/model.py) is a VGG-style stack of 3x3 convolutions with batch
normalisation, four stages of two convolutions, then a small dense head. It takes raw
48x48x1 pixels 0..255 and returns 7 class probabilities.

The recipe: one random affine warp per image (flip, shift, zoom, rotation) plus random
erasing; SGD with Nesterov momentum, linear warm-up then cosine decay, label smoothing,
weight decay; mixed bfloat16 where the CPU computes it natively. The epoch with the best
validation accuracy (validation carved from Training; test rows are never seen) is kept,
and its batch-norm statistics are recomputed on the un-augmented training images (kept if
validation accuracy improves). Then the model and its reports are written to --out.

--backbone mobilenet trains the brief's optional pre-trained model instead: ImageNet
MobileNet weights (a local file given by --weights), fine-tuned freeze-then-unfreeze with
the same data, validation protocol and reports (results/model/pre_trained_model*).

--teacher MODEL distils instead: the network learns MODEL's probabilities (averaged with
the mirror) of the training images and of warped copies of them, labelled once before
training; with --init-from it starts from a trained network. That is how the stream's fast
model was made (docs/live.md).

Every epoch is snapshotted: a run that is killed and started again with the same
command continues after its last complete epoch.

    python scripts/train.py                          # the committed model
    python scripts/train.py --subset 500 --epochs 2  # a quick smoke run
    python scripts/train.py --backbone mobilenet --weights mobilenet_2_5_224_tf_no_top.h5   # the pre-trained model
"""
import argparse
import sys
import warnings
from pathlib import Path

from expressions import DATA_DIR, IMAGE_SIZE, MODEL_DIR, UserError, import_tensorflow, machine, run_cli
from expressions import data as fer2013
from expressions import model as nets
from expressions import reports, training
from expressions.outputs import check_folder


# ---------------------------------------------------------------- settings
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: 50, or 10 with --backbone mobilenet)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="images per step, over all workers (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=float, default=2, help="linear warm-up length (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default: %(default)s)")
    p.add_argument("--width", type=int, default=32,
                   help="channels of the first stage; the stages use 1x, 2x, 4x, 8x (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=0.3, help="dropout before the last layer (default: %(default)s)")
    p.add_argument("--crop-px", type=int, default=IMAGE_SIZE,
                   help="our CNN sees the central crop of this many pixels of each 48x48 face (a layer of the "
                        "saved model, which still takes 48x48); training shifts the crop at random by up to "
                        "half the margin, so it trains on random crops, and the 10-view prediction becomes "
                        "ten crops (default: %(default)s, the whole face)")
    p.add_argument("--erase-prob", type=float, default=0.25, help="random-erasing probability (default: %(default)s)")
    p.add_argument("--teacher", default=None,
                   help="distil: train toward this model's probabilities (own, pre_trained or a .pkl; "
                        "averaged with its mirror image, as the stream classified) instead of the labels, with "
                        "no label smoothing. The training images are the originals plus --teacher-copies warped "
                        "copies of each, made once and each labelled by the teacher, and training only mirrors "
                        "them, so the teacher has labelled exactly what the network sees; validation still scores "
                        "the labels. Makes the stream's fast model (docs/live.md) (default: none, train on the labels)")
    p.add_argument("--teacher-copies", type=int, default=2,
                   help="with --teacher: warped copies of each training image (rotation, shift, zoom as in "
                        "training on labels, no erasing) (default: %(default)s)")
    p.add_argument("--init-from", default=None,
                   help="start from the weights of this trained .pkl of the same network (--width, --crop-px) "
                        "instead of random ones (default: none)")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="k-fold cross-validation: train K networks, each holding out its own K-th of the "
                        "training rows (stratified, --seed) as its validation; prints each fold's accuracy on "
                        "its held-out rows, their mean and spread, and each network's and their ensemble's "
                        "accuracy on the validation split, which none of them saw. The networks are saved as "
                        "MODEL_foldN.pkl; folds already finished with the same options are kept when the "
                        "command runs again (--fresh trains them all again), and --time-budget holds for each "
                        "fold (default: off, one network)")
    p.add_argument("--only-fold", type=int, default=0, metavar="N",
                   help="with --folds: train fold N only, so that folds can run on several machines sharing "
                        "--out (two side by side on one 2-core machine were measured no faster than one after "
                        "the other); the command without it then keeps the finished folds and prints the "
                        "summary (default: every fold)")
    p.add_argument("--include-validation", action="store_true",
                   help="also train on the validation rows (all 28,709 Training rows): the final refit of a "
                        "recipe already chosen on validation. Nothing is held out, so the last epoch is kept "
                        "and the batch-norm pass is skipped (neither can be judged), and the validation "
                        "accuracy printed each epoch is on images the network trains on (default: off)")
    p.add_argument("--no-batch-norm-pass", action="store_true",
                   help="our own CNN ends its run with one pass over the un-augmented training images that "
                        "recomputes the batch-norm statistics (kept only if validation accuracy improves); "
                        "this skips it")
    p.add_argument("--backbone", choices=["vgg", "mobilenet"], default="vgg",
                   help="vgg: our CNN, trained from scratch; mobilenet: the optional pre-trained model, an "
                        "ImageNet MobileNet (alpha 0.25) fine-tuned on upscaled faces (default: %(default)s)")
    p.add_argument("--weights", default=None,
                   help="mobilenet only, and needed with it: the ImageNet weights, a path to Keras "
                        "Applications' mobilenet_2_5_224_tf_no_top.h5, 'imagenet' (Keras downloads them), or "
                        "'none' for random initialisation")
    p.add_argument("--input-px", type=int, default=96,
                   help="mobilenet only: faces are upscaled inside the model to this size (default: %(default)s)")
    p.add_argument("--freeze-epochs", type=int, default=2,
                   help="mobilenet only: epochs that train the new head with the backbone frozen, before "
                        "everything is fine-tuned (default: %(default)s)")
    p.add_argument("--finetune-lr", type=float, default=0.01,
                   help="mobilenet only: peak learning rate once the backbone is unfrozen (1 warm-up epoch, then "
                        "cosine decay); --lr is the head's rate while frozen (default: %(default)s)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="minutes; stop after the epoch that would overrun it (default: none)")
    p.add_argument("--subset", type=int, default=None,
                   help="train on only this many training images, validate on a quarter as many (default: all)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR, help="prepared data (default: %(default)s)")
    p.add_argument("--out", type=Path, default=MODEL_DIR,
                   help="output folder for the model and its reports (default: %(default)s)")
    p.add_argument("--model-name", default=None,
                   help="model file stem (default: my_own_model, or pre_trained_model with --backbone mobilenet)")
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto",
                   help="train in mixed bfloat16; auto = on only where the CPU computes bf16 natively "
                        "(AVX512-BF16/AMX; elsewhere it is emulated and about 2.8x slower) (default: %(default)s)")
    p.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                   help="tf.distribute strategy: one device, or MirroredStrategy over every local GPU (one "
                        "replica on a CPU-only machine); training on several machines is not supported, see "
                        "docs/model.md (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="discard an interrupted run's snapshots and start over")
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip the test-set evaluation and confusion matrix at the end")
    p.add_argument("--benchmark", type=int, default=0, metavar="STEPS",
                   help="do not train: time this many training steps (after 3 warm-up steps) of the chosen "
                        "network, batch size and precision, print images/s (default: off)")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = 50 if args.backbone == "vgg" else 10
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be positive")
    if not 0 <= args.teacher_copies <= 10:  # each copy of the 28,709 faces takes 66 MB of memory
        p.error("--teacher-copies must be 0 to 10")
    if args.teacher:
        args.label_smoothing = 0.0  # soft targets already
    if args.model_name is None:
        args.model_name = "my_own_model" if args.backbone == "vgg" else "pre_trained_model"
    if not (32 <= args.crop_px <= IMAGE_SIZE and args.crop_px % 2 == 0):
        p.error(f"--crop-px must be even, from 32 to {IMAGE_SIZE}")
    if args.backbone != "vgg" and args.crop_px != IMAGE_SIZE:
        p.error("--crop-px is an option of our own CNN (--backbone vgg)")
    if args.folds == 1 or not 0 <= args.folds <= 10:
        p.error("--folds must be 2 to 10")
    if args.only_fold and not 1 <= args.only_fold <= args.folds:
        p.error("--only-fold N needs --folds K, with N from 1 to K")
    if args.folds and args.benchmark:
        p.error("--benchmark times one network: leave out --folds")
    if args.folds and args.include_validation:
        p.error("--folds holds out rows of its own: it cannot train on the validation rows too")
    if args.backbone == "mobilenet":
        if args.weights is None:  # no default: 'imagenet' would be a download
            p.error("--backbone mobilenet needs --weights: a path to mobilenet_2_5_224_tf_no_top.h5, "
                    "'imagenet' (Keras downloads them) or 'none'")
        if args.weights == "none":
            args.freeze_epochs = 0  # nothing learnt to protect
    elif args.weights is not None:
        p.error("--weights needs --backbone mobilenet")
    return args


def build_network(args, starting_weights=True):
    """The network --backbone asks for, with its starting weights (ImageNet for mobilenet);
    starting_weights=False gives only its shape, for weights loaded from a snapshot next."""
    if args.backbone == "mobilenet":
        weights = None if args.weights == "none" or not starting_weights else args.weights
        return nets.build_mobilenet(weights, args.input_px, args.dropout)
    return nets.build_cnn(args.width, args.dropout, args.crop_px)


def main(argv=None):
    args = parse_args(argv)
    if args.backbone == "mobilenet" and args.weights not in ("imagenet", "none") and not Path(args.weights).is_file():
        raise UserError(f"MobileNet weights not found at {args.weights}: pass --weights imagenet "
                        "(downloads them) or the path of mobilenet_2_5_224_tf_no_top.h5")
    out = check_folder(args.out)

    # ------------------------------------------------------------ data
    data = fer2013.load_prepared(args.data_dir)
    if args.subset:
        data = fer2013.subset(data, args.subset, args.seed)
    if args.include_validation:
        data = fer2013.validation_in_training(data)
    if args.teacher:
        nets.load_model(args.teacher)  # a missing or unsafe model is refused before the long work
    starting = nets.load_model(args.init_from) if args.init_from else None
    # An interrupted run with these options, or a new one (checked before TensorFlow loads).
    defaults = {"crop_px": IMAGE_SIZE, "include_validation": False, "teacher": None, "init_from": None, "folds": 0}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("fresh", "no_evaluate", "time_budget", "benchmark", "no_batch_norm_pass", "only_fold")
              and not (k in defaults and v == defaults[k]) and not (k == "teacher_copies" and not args.teacher)}
    if args.backbone == "vgg":  # options of the pre-trained model only
        for k in ("backbone", "weights", "input_px", "freeze_epochs", "finetune_lr"):
            config.pop(k)
    given = sys.argv[1:] if argv is None else argv  # the options this run was given, also in-process
    command = " ".join(["python scripts/train.py", *map(str, given)])
    if args.folds:
        return train_folds(args, data, out, config, starting, command)
    train_network(args, data, out, args.model_name, config, starting, command)
    return 0


def train_folds(args, data, out, config, starting, command):
    """--folds K: K networks, each validated on its own K-th of the training rows, then
    each and their ensemble on the validation split none of them saw."""
    folds = fer2013.k_folds(data["y_train"], args.folds, args.seed)
    held_out, names = [], []
    for k in range(args.folds):
        if args.only_fold and k + 1 != args.only_fold:
            continue
        name = f"{args.model_name}_fold{k + 1}"
        names.append(name)
        fold_config = {**config, "fold": k + 1}
        done = None if args.fresh else reports.finished_run(out, name, fold_config)
        if done is not None:
            print(f"fold {k + 1}/{args.folds}: finished before with these options ({out / (name + '.pkl')}), kept",
                  flush=True)
            held_out.append(done)
            continue
        print(f"fold {k + 1}/{args.folds}: training on {int((folds != k).sum()):,} images, validating on its "
              f"{int((folds == k).sum()):,} held-out ones", flush=True)
        fold_data = fer2013.fold_split(data, folds, k)
        held_out.append(train_network(args, fold_data, out, name, fold_config, starting, command,
                                      seed=args.seed + k))
    if args.only_fold:
        return 0
    summary = reports.fold_summary(out, names, held_out, data, args.model_name)
    print(summary, flush=True)
    return 0


def train_network(args, data, out, model_name, config, starting, command, seed=None):
    """Train, choose and save one network and its reports; returns the kept validation accuracy."""
    seed = args.seed if seed is None else seed
    run = None if args.benchmark else training.RunFolder(out / f"{model_name}_run", config, args.fresh)
    tf, keras = import_tensorflow()
    strategy = training.make_strategy(args.strategy)
    keras.utils.set_random_seed(seed)
    use_bf16 = args.mixed_precision == "on" or (args.mixed_precision == "auto" and training.cpu_has_bf16())
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if use_bf16 else "float32")
    targets = None
    if args.teacher:  # the images the network will see, each with the teacher's probabilities
        data["x_train"], targets = training.teacher_labelled(data["x_train"], args.teacher, args.teacher_copies,
                                                             seed)
    train_ds, val_ds = training.make_datasets(data, args.batch_size, args.erase_prob, seed, args.crop_px,
                                              targets, teacher=bool(args.teacher))
    steps_per_epoch = len(data["x_train"]) // args.batch_size
    if steps_per_epoch < 1:
        raise UserError(f"{len(data['x_train'])} training images is fewer than one batch of {args.batch_size}")
    precision = "mixed bfloat16" if use_bf16 else "float32"
    if args.benchmark:
        with strategy.scope():
            rate = training.training_throughput(build_network(args), train_ds, args.benchmark)
        print(f"{args.backbone} width {args.width}, batch {args.batch_size}, {precision}: {rate:.0f} training images/s")
        return None

    # ------------------------------------------------------------ model (new, or the interrupted run's)
    start = run.epochs_done

    def compile_phase(model, peak_lr, epochs, warmup_epochs, constant=False):
        training.compile_sgd(model, peak_lr, steps_per_epoch * epochs, int(warmup_epochs * steps_per_epoch),
                             args.weight_decay, args.label_smoothing, constant)

    # The pre-trained model first trains its new head on a frozen backbone (a constant
    # rate), then fine-tunes everything; our own CNN has a single phase.
    frozen_epochs = min(args.freeze_epochs, args.epochs) if args.backbone == "mobilenet" else 0
    with strategy.scope():
        if start:
            model = run.load_checkpoint()
        else:
            model = build_network(args)
            if starting is not None:
                training.copy_weights(starting, model, args.init_from)
            if frozen_epochs:
                model.get_layer("backbone").trainable = False
                compile_phase(model, args.lr, frozen_epochs, 0, constant=True)
            elif args.backbone == "mobilenet":  # random initialisation: nothing to freeze
                compile_phase(model, args.finetune_lr, args.epochs, 1)
            else:
                compile_phase(model, args.lr, args.epochs, args.warmup_epochs)
    print(f"{f'resuming after epoch {start}:' if start else 'training'} {model.name}, "
          f"{model.count_params():,} parameters, {len(data['x_train']):,} train / {len(data['x_val']):,} "
          f"validation images, {args.epochs} epochs of {steps_per_epoch} steps"
          f"{f' ({frozen_epochs} with the backbone frozen)' if frozen_epochs else ''}, {precision}", flush=True)

    # ------------------------------------------------------------ fit
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # our tf.data pipeline shuffles
    callbacks = training.make_callbacks(run, args.time_budget)
    if frozen_epochs and start < frozen_epochs:
        model.fit(train_ds, validation_data=val_ds, epochs=frozen_epochs, initial_epoch=start,
                  verbose=0, callbacks=callbacks)
        start = frozen_epochs
    stopped = model.stop_training  # the time budget ran out
    if args.backbone == "mobilenet" and not model.get_layer("backbone").trainable and not stopped:
        with strategy.scope():  # unfreeze: a new optimizer for the fine-tuning phase
            nets.unfreeze_backbone(model)
            compile_phase(model, args.finetune_lr, args.epochs - frozen_epochs, 1)
    if start < args.epochs and not stopped:
        model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, initial_epoch=start, verbose=0,
                  callbacks=callbacks)

    # ------------------------------------------------------------ choose: best epoch, batch-norm pass
    # The best validation epoch (the last one with --include-validation), rebuilt in float32
    # so that inference needs no bf16 support.
    history = run.history()
    keras.mixed_precision.set_global_policy("float32")
    final = build_network(args, starting_weights=False)
    if args.include_validation:
        kept_epoch, kept_val = len(history), None
        final.set_weights(model.get_weights())
    else:
        kept_epoch, kept_val = run.state["best_epoch"] + 1, float(history["val_accuracy"].max())
        final.load_weights(run.best_weights())
    batch_norm = None
    if args.backbone == "vgg" and not args.no_batch_norm_pass and not args.include_validation:
        final, batch_norm = training.batch_norm_pass(final, data, args.batch_size)
        if batch_norm["kept"]:
            kept_val = batch_norm["val_accuracy_recomputed"]

    # ------------------------------------------------------------ save
    wall_minutes = sum(run.state["wall_seconds"]) / 60
    model_path = out / f"{model_name}.pkl"
    try:
        nets.save_model(final, model_path)  # a temporary file, removed if this fails
    except OSError as err:
        raise UserError(f"cannot write {model_path}: {training.write_failure(err)}; the trained epochs are kept: "
                        "make room and run the same command again to finish") from None
    val_note = "validation rows trained on" if kept_val is None else f"val_acc {kept_val:.4f}"
    print(f"saved {model_path} (epoch {kept_epoch}, {val_note}); training took {wall_minutes:.1f} min", flush=True)

    # ------------------------------------------------------------ report
    metrics = {"model": model_path.name, "model_sha256": nets.file_sha256(model_path), "command": command,
               "epochs_run": len(history), "kept_epoch": kept_epoch, "val_accuracy": kept_val,
               "trained_on_validation": args.include_validation,
               "batch_norm_pass": batch_norm, "train_wall_minutes": wall_minutes,
               "parameters": int(final.count_params()), "config": config,
               "machine": {**machine(), "tensorflow": tf.__version__, "keras": keras.__version__}}
    reports.write_reports(final, metrics, history, data, out, model_name, evaluate_test=not args.no_evaluate)
    run.finish(reports.artifact(out, model_name, "tensorboard"))
    return kept_val


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]))
