#!/usr/bin/python3
"""The PyTorch peer of models' training-step benchmarks: the same workloads
(W1, W2: a Seq2Seq step; G1: a GAN step) timed with PyTorch on the CPU, and
printed as Go benchmark lines so that they sit beside downpour's in one file:

    go test -run NONE -bench 'W1|G1' -benchtime 4x ./models > go.txt
    /usr/bin/python3 models/testdata/torch_peer.py W1 G1 >> go.txt

It is the one peer script: every PyTorch figure in README.md and
docs/benchmarks.md comes from it. Each workload does what its Go benchmark
does (bench_test.go's workloads):

  W1  Seq2Seq, 2 LSTM layers of 256 in the encoder and the decoder,
      embeddings of 256, vocabularies 4000/4000, batch 64, source and
      target length 12: forward, cross-entropy backward, global-norm clip
      at 5, SGD at 0.7; target tokens/s.
  W2  the same at 4 layers of 512, vocabularies 16000/8000, batch 128,
      length 20.
  G1  the GAN paper's MNIST networks (generator 100-1200-1200-784 with ReLU
      and a sigmoid; discriminator with input dropout 0.2, two maxout
      layers of 240 units x 5 pieces with dropout 0.5, one sigmoid unit),
      batch 100: a discriminator update, then a generator update through
      the updated discriminator, each SGD with momentum 0.5 at 0.1;
      samples/s. The D update computes no gradient for its input images
      (fake.detach()), the G update none for D's weights (they are frozen
      for its backward pass), as downpour's DLoss and GLossAfterD do.

Where the work still differs: PyTorch's LSTM has two bias vectors a layer
(b_ih and b_hh, added each step) where downpour's has one, and PyTorch zeroes
each gradient by setting it to None and allocating it again. Both are small
beside the GEMMs.

Runs on --threads threads (default 2, this machine's cores), after one
warm-up step; reports the median of --count runs of --steps steps each.
First it prints the torch version and the OpenBLAS kernels torch's GEMMs run
on (Debian's torch calls OpenBLAS; OPENBLAS_CORETYPE picks other kernels) as
benchmark configuration lines. Needs Debian's python3-torch."""
import argparse
import ctypes
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SEQ2SEQ = {  # layers, hidden, embedding, source vocab, target vocab, batch, length
    "W1": (2, 256, 256, 4000, 4000, 64, 12),
    "W2": (4, 512, 512, 16000, 8000, 128, 20),
}


class Seq2Seq(nn.Module):
    def __init__(self, layers, hidden, embed, src_vocab, tgt_vocab):
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, embed)
        self.tgt_embed = nn.Embedding(tgt_vocab, embed)
        self.encoder = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.project = nn.Linear(hidden, tgt_vocab)

    def forward(self, src, tgt_in):
        _, state = self.encoder(self.src_embed(src))
        out, _ = self.decoder(self.tgt_embed(tgt_in), state)
        return self.project(out)


def seq2seq_step(name):
    layers, hidden, embed, sv, tv, batch, length = SEQ2SEQ[name]
    model = Seq2Seq(layers, hidden, embed, sv, tv)
    for p in model.parameters():  # the paper's initialisation
        nn.init.uniform_(p, -0.08, 0.08)
    opt = torch.optim.SGD(model.parameters(), lr=0.7)
    src = torch.randint(sv, (batch, length))
    tgt_in = torch.randint(tv, (batch, length))
    tgt_out = torch.randint(tv, (batch, length))

    def step():
        opt.zero_grad(set_to_none=True)
        logits = model(src, tgt_in)
        F.cross_entropy(logits.view(-1, tv), tgt_out.view(-1)).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    return step, batch * length, "tokens/s"


class Maxout(nn.Module):
    def __init__(self, inputs, units, pieces):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(inputs, units * pieces)

    def forward(self, x):
        return self.linear(x).view(-1, self.units, self.pieces).amax(dim=2)


def gan_step(_):
    rows = 100
    gen = nn.Sequential(
        nn.Linear(100, 1200), nn.ReLU(),
        nn.Linear(1200, 1200), nn.ReLU(),
        nn.Linear(1200, 784), nn.Sigmoid())
    disc = nn.Sequential(
        nn.Dropout(0.2), Maxout(784, 240, 5),
        nn.Dropout(0.5), Maxout(240, 240, 5),
        nn.Dropout(0.5), nn.Linear(240, 1))  # a logit: the sigmoid is in the loss
    g_opt = torch.optim.SGD(gen.parameters(), lr=0.1, momentum=0.5)
    d_opt = torch.optim.SGD(disc.parameters(), lr=0.1, momentum=0.5)
    real = torch.rand(rows, 784)
    ones, zeros = torch.ones(rows, 1), torch.zeros(rows, 1)
    bound = 3 ** 0.5

    def step():
        z = torch.empty(rows, 100).uniform_(-bound, bound)
        fake = gen(z)
        d_opt.zero_grad(set_to_none=True)
        d_loss = (F.binary_cross_entropy_with_logits(disc(real), ones)
                  + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
        d_loss.backward()
        d_opt.step()
        g_opt.zero_grad(set_to_none=True)
        disc.requires_grad_(False)  # G's update needs no gradient for D's weights
        F.binary_cross_entropy_with_logits(disc(fake), ones).backward()  # the non-saturating loss
        disc.requires_grad_(True)
        g_opt.step()

    return step, rows, "samples/s"


WORKLOADS = {"W1": seq2seq_step, "W2": seq2seq_step, "G1": gan_step}


def openblas_core():
    """The kernels of the OpenBLAS this process has loaded (torch's BLAS)."""
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # loads the BLAS
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "libopenblas" in line}
    for lib in sorted(libs):
        get = ctypes.CDLL(lib).openblas_get_corename
        get.restype = ctypes.c_char_p
        return get().decode()
    return "none (torch's BLAS is not OpenBLAS)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--count", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch: {torch.__version__}")
    print(f"openblas-core: {openblas_core()}")
    for name in args.workloads:
        torch.manual_seed(1)
        step, items, unit = WORKLOADS[name](name)
        step()  # warm up
        rates = []
        for _ in range(args.count):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step()
            elapsed = time.perf_counter() - t0
            rates.append(items * args.steps / elapsed)
        ns = 1e9 * items / statistics.median(rates)
        print(f"Benchmark{name}/torch-{args.threads}\t{args.steps * args.count}\t{ns:.0f} ns/op\t{statistics.median(rates):.0f} {unit}")


if __name__ == "__main__":
    main()
