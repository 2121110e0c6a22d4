"""IB-FT (rotelab.train.ib): the KL against torch's, the loss equal to the formula on the
middle hidden state, gradients where they belong, the model left as it was, LoRA, the trainer."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

from rotelab.errors import RotelabError
from rotelab.train import TrainConfig, causal_lm_loss, train
from rotelab.train.ib import IBConfig, InformationBottleneck, gaussian_kl


def _model(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg)


BATCH = torch.randint(0, 50, (3, 13), generator=torch.Generator().manual_seed(1))


def test_kl_equals_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = torch.distributions.kl_divergence(q, p).mean()
    assert gaussian_kl(mu, logvar).item() == pytest.approx(ref.item(), rel=1e-6)
    assert gaussian_kl(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_loss_is_the_formula_on_the_middle_hidden_state():
    model = _model().eval()  # eval: z = mu, deterministic
    ib = InformationBottleneck(IBConfig(alpha=0.3, beta=0.5))
    with ib.attach(model):
        assert ib.layer == 1  # 4 blocks: the output of block 1, hidden_states[2]
        total, parts = ib.loss(model, BATCH)
        out = model(input_ids=BATCH[:, :-1], output_hidden_states=True)
        h = out.hidden_states[2]
        a = ib.adapter
        mu, logvar = a.w_mu(h), a.w_v(h).clamp(-4, 4)
        kl = -0.5 * torch.mean(1 + logvar - mu**2 - logvar.exp())
        ce_ib = causal_lm_loss(model.lm_head(a.w_up(mu)), BATCH)
        ce = causal_lm_loss(out.logits, BATCH)
    want = ce + 0.3 * (kl + 0.5 * ce_ib)
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    assert parts["kl"] == pytest.approx(kl.item(), rel=1e-6)
    assert parts["ce_ib"] == pytest.approx(ce_ib.item(), rel=1e-6)


def test_the_model_forward_is_unchanged_and_the_adapter_removed():
    model = _model().eval()
    before = model(input_ids=BATCH).logits
    keys = set(model.state_dict())
    ib = InformationBottleneck()
    with ib.attach(model):
        assert torch.equal(model(input_ids=BATCH).logits, before)  # h is observed, not replaced
        assert any(k.startswith("ib_adapter.") for k in model.state_dict())
    assert set(model.state_dict()) == keys and not hasattr(model, "ib_adapter")
    model(input_ids=BATCH)  # the hook is gone too: nothing is kept any more
    assert ib._h is None


def test_gradients_reach_the_adapter_and_the_layers_below_the_bottleneck_only_via_ib():
    model = _model().train()
    ib = InformationBottleneck(IBConfig(alpha=1.0, beta=1.0))
    with ib.attach(model):
        model(input_ids=BATCH[:, :-1])
        extra = ib(model, BATCH, None)
        extra.backward()
        adapter_grads = [p.grad for p in ib.adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in adapter_grads)
    blocks = model.model.layers
    assert blocks[0].mlp.down_proj.weight.grad.abs().sum() > 0  # below the hooked block
    assert blocks[3].mlp.down_proj.weight.grad is None  # above it: the IB term does not reach


def test_sampling_in_training_mode_and_the_mean_in_eval():
    model = _model()
    ib = InformationBottleneck()
    with ib.attach(model.train()):
        torch.manual_seed(0)
        a, _ = ib.loss(model, BATCH)
        b, _ = ib.loss(model, BATCH)
        assert a.item() != b.item()  # a new eps each pass
        model.eval()
        ib.adapter.eval()
        c, _ = ib.loss(model, BATCH)
        d, _ = ib.loss(model, BATCH)
        assert c.item() == d.item()


def test_trains_with_the_trainer_and_the_kl_falls():
    model = _model()
    ib = InformationBottleneck(IBConfig(alpha=1.0, beta=0.01))
    kls = []
    batches = (BATCH for _ in range(40))
    with ib.attach(model):
        start = [p.detach().clone() for p in ib.adapter.parameters()]
        train(model, batches, TrainConfig(steps=40, lr=1e-2, warmup_steps=2, log_every=1,
                                          precision="fp32"),
              callback=lambda rec: kls.append(ib.last["kl"]), extra_loss=ib)  # fmt: skip
        moved = [not torch.equal(a, b) for a, b in zip(start, ib.adapter.parameters())]
    assert all(moved)
    assert kls[-1] < 0.5 * kls[0], (kls[0], kls[-1])


def test_works_on_a_lora_model():
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model("llama")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ib = InformationBottleneck()
    batch = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    with ib.attach(model):
        total, parts = ib.loss(model, batch)
        total.backward()
        assert ib.layer == 0 and parts["ce_ib"] > 0
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert lora and any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
        assert all(p.grad is not None for p in ib.adapter.parameters())
    frozen = base.model.layers[0].self_attn.q_proj.base_layer.weight
    assert frozen.grad is None and not frozen.requires_grad


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [(IBConfig(alpha=-0.1), "--ib-alpha"), (IBConfig(beta=-1), "--ib-beta"),
     (IBConfig(alpha=float("nan")), "--ib-alpha"), (IBConfig(bottleneck=0), "bottleneck")],
)  # fmt: skip
def test_bad_settings_are_one_line(cfg, fragment):
    with pytest.raises(RotelabError, match=fragment):
        InformationBottleneck(cfg)


def test_bad_layer_and_double_attach():
    model = _model(layers=2)
    with pytest.raises(RotelabError, match="outside"):
        with InformationBottleneck(IBConfig(layer=5)).attach(model):
            pass
    with InformationBottleneck().attach(model):
        with pytest.raises(RotelabError, match="already attached"):
            with InformationBottleneck().attach(model):
                pass
