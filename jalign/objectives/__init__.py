"""Pure, composable preference objectives over log-prob pytrees.

Every registered objective is exported here under its registry name, so an
experiment reads ``dpo(beta=0.1) + 0.2 * sft()``; ``OBJECTIVES`` lists those
names (a test checks it against the registry). ``objectives`` imports only
jax, chex and numpy: no models, sharding, data or training code.
"""

from jalign.objectives.batch import LogProbs, from_sequences
from jalign.objectives.core import Objective, Scaled, Sum, batch_mean, static_field
from jalign.objectives.declaration import Requirements, Sampling
from jalign.objectives.margin import MarginObjective
from jalign.objectives.anchored import (
    APODown as apo_down, APOZero as apo_zero, NCA as nca, SPPOHard as sppo_hard,
)
from jalign.objectives.dispreference import D2O as d2o
from jalign.objectives.distillation import AlignDistil as aligndistil
from jalign.objectives.distributional import (
    AOTPaired as aot_paired, AOTUnpaired as aot_unpaired, DiscoPOP as discopop, EXO as exo,
    EXOReward as exo_reward,
)
from jalign.objectives.copg import CoPG as copg, OnlineCoPG as online_copg
from jalign.objectives.fdpo import FDPO as fdpo
from jalign.objectives.grao import GRAO as grao
from jalign.objectives.gpo import (
    GPOExponential as gpo_exponential, GPOHinge as gpo_hinge, GPOLogistic as gpo_logistic,
    GPOSavage as gpo_savage, GPOSquared as gpo_squared,
    GPOTruncatedQuadratic as gpo_truncated_quadratic, SLiC as slic,
)
from jalign.objectives.literature_pairwise import IFT as ift, JPO as jpo, MaPO as mapo, SemDPO as sem_dpo
from jalign.objectives.multi_objective import MultiReward as multi_reward
from jalign.objectives.listwise import (
    CurryDPO as curry_dpo, LiPOLambda as lipo_lambda, LiPOSoftmax as lipo_softmax, ListMLE as list_mle,
)
from jalign.objectives.online import (
    EGPO as egpo, INPO as inpo, IPOMD as ipo_md, NashMD as nash_md, NashMDPG as nash_md_pg,
    OnlineDPO as online_dpo, OnlineIPO as online_ipo, SPPO as sppo,
)
from jalign.objectives.pairwise import DPO as dpo, IPO as ipo
from jalign.objectives.poft import PoFT as poft
from jalign.objectives.policy_gradient import GRPO as grpo, PPOClip as ppo_clip, REINFORCE as reinforce, RLOO as rloo
from jalign.objectives.ppo import PPO as ppo
from jalign.objectives.preference_models import BTReward as bt_reward, GPM as gpm
from jalign.objectives.preference_models import PairwisePreference as pairwise_preference
from jalign.objectives.reference_free import (
    ASFT as asft, CPO as cpo, ORPO as orpo, SimPO as simpo, TPO as tpo,
)
from jalign.objectives.rejection_sampling import RSF as rsf
from jalign.objectives.robust import LCPO as lcpo, RDPO as rdpo
from jalign.objectives.rso import RSO as rso
from jalign.objectives.sft import SFT as sft
from jalign.objectives.selfplay import (
    CREAM as cream, DatasetReset as dataset_reset, SELM as selm, SPIN as spin, XPO as xpo,
)
from jalign.objectives.token_level import SparsePO as sparsepo, TDPO1 as tdpo1, TDPO2 as tdpo2, TGDPO as tgdpo
from jalign.objectives.unpaired import BCO as bco, BCOPair as bco_pair, KTO as kto, NPO as npo
from jalign.objectives.weighted import (
    DPOP as dpop, IREPO as irepo, LDDPO as ld_dpo, MADPO as madpo, MODPO as modpo, SoftDPO as soft_dpo,
    WPO as wpo,
)
from jalign.objectives.registry import make, objective, parse, registered

OBJECTIVES = (
    "aligndistil", "aot_paired", "aot_unpaired", "apo_down", "apo_zero", "asft", "bco", "bco_pair", "bt_reward",
    "copg", "cpo", "cream", "curry_dpo", "d2o", "dataset_reset", "discopop", "dpo", "dpop", "egpo", "exo",
    "exo_reward", "fdpo", "gpm", "gpo_exponential", "gpo_hinge", "gpo_logistic", "gpo_savage", "gpo_squared",
    "gpo_truncated_quadratic", "grao", "grpo", "ift", "inpo", "ipo", "ipo_md", "irepo", "jpo", "kto", "lcpo",
    "ld_dpo", "lipo_lambda", "lipo_softmax", "list_mle", "madpo", "mapo", "modpo", "multi_reward", "nash_md",
    "nash_md_pg", "nca", "npo", "online_copg", "online_dpo", "online_ipo", "orpo", "pairwise_preference", "poft",
    "ppo", "ppo_clip", "rdpo", "reinforce", "rloo", "rsf", "rso", "selm", "sem_dpo", "sft", "simpo", "slic",
    "soft_dpo", "sparsepo", "spin", "sppo", "sppo_hard", "tdpo1", "tdpo2", "tgdpo", "tpo", "wpo", "xpo"
)

__all__ = [
    "LogProbs", "MarginObjective", "OBJECTIVES", "Objective", "Requirements", "Sampling", "Scaled", "Sum",
    "batch_mean", "from_sequences", "make", "objective", "parse", "registered", "static_field", *OBJECTIVES,
]
