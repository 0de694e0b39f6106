"""The BIOMEDICA sample format as constants: field names, concept vocabulary, licence subsets.

Source: shared/BIOMEDICA.md (facts from arXiv 2501.07171, the dataset card of
`BIOMEDICA/biomedica_webdataset_24M`). Everything that reads or writes BIOMEDICA-shaped samples (the
training pipeline, the metadata filters, the synthetic corpus) takes the names from here so that a typo is an
import error rather than a silently empty filter.
"""

# Files of one WebDataset sample, besides webdataset's own `__key__`.
SAMPLE_KEYS = ("jpg", "txt", "json")

# The 25 fields of the `json` member, in the order BIOMEDICA.md lists them (image fields, then article fields).
METADATA_FIELDS = (
    "image_file_name",
    "image_cluster_id",
    "image_hash",
    "image_label_id",
    "image_panel_type",
    "image_panel_subtype",
    "image_primary_label",
    "image_secondary_label",
    "image_size",
    "image_set",
    "image_context",
    "article_accession_id",
    "article_title",
    "article_journal",
    "article_date",
    "article_abstract",
    "article_mesh_terms",
    "article_keywords",
    "article_reference_ids",
    "article_reference_count",
    "article_reference_list",
    "article_subject",
    "article_citation",
    "article_license",
    "article_text",
)

# Large article fields: drop them from the json before batching (article_text is the full paper).
HEAVY_FIELDS = ("article_text", "article_reference_list")

# The 16 global concepts (`image_primary_label` values); Plots and Charts alone is ~51% of pairs.
PRIMARY_CONCEPTS = (
    "Plots and Charts",
    "Illustrative Diagrams",
    "Microscopy",
    "Clinical Imaging",
    "Chemical Structures",
    "Immuno Assays",
    "Tables",
    "Graphs and Networks",
    "Maps",
    "Screen Based Visuals",
    "Tools and Materials",
    "Natural Images",
    "Laboratory Specimens and Cultures",
    "PCR",
    "Scientific Formulae and Equations",
    "Ambiguous",
)

# Image pairs per global concept, from the paper (BIOMEDICA.md, "Image counts per global concept"); the paper
# names Screen Based Visuals "Hand Drawn and Screen Based Visuals". They sum to 24.07M, a little over the
# 24.05M pairs (rounding in the paper) and leave none for Natural Images, Laboratory Specimens and Cultures
# and Ambiguous, which it does not count: we treat those three as rare. Per subset (other / commercial /
# noncommercial) the paper splits three:
# Plots and Charts 542,718 / 9,426,147 / 2,394,358; Microscopy 101,617 / 1,818,302 / 597,413;
# Clinical Imaging 82,349 / 1,078,901 / 766,908.
PRIMARY_CONCEPT_PAIRS = {
    "Plots and Charts": 12_389_066,
    "Illustrative Diagrams": 2_919_995,
    "Microscopy": 2_517_332,
    "Clinical Imaging": 1_928_158,
    "Chemical Structures": 1_128_082,
    "Immuno Assays": 904_632,
    "Tables": 639_029,
    "Graphs and Networks": 525_660,
    "Screen Based Visuals": 457_141,
    "Maps": 324_265,
    "Tools and Materials": 272_399,
    "PCR": 35_353,
    "Scientific Formulae and Equations": 28_888,
}

# Local concepts (`image_secondary_label` values). The full vocabulary was not published: the first ten
# are named in BIOMEDICA.md, the rest are representative of the figure kinds found in PMC articles.
SECONDARY_CONCEPTS = (
    "x-ray radiography",
    "optical coherence tomography",
    "endoscopy",
    "skin lesion",
    "ultrasound",
    "computerized tomography",
    "fluorescence microscopy",
    "electron microscopy",
    "light microscopy",
    "confocal microscopy",
    "magnetic resonance imaging",
    "positron emission tomography",
    "fundus photography",
    "bar plots",
    "line plots",
    "scatter plots",
    "box plots",
    "heatmaps",
    "kaplan-meier curves",
    "chemical structure",
    "western blot",
    "gel electrophoresis",
    "flow cytometry",
    "phylogenetic tree",
    "surgical photograph",
)

# Licence subsets: the hub folders, each with the `article_license` values it holds.
SUBSETS = {
    "commercial": ("CC0", "CC BY", "CC BY-SA", "CC BY-ND"),
    "noncommercial": ("CC BY-NC", "CC BY-NC-SA", "CC BY-NC-ND"),
    "other": ("No license", "Custom license"),
}

# Pairs and shards per subset on the hub (BIOMEDICA.md table); shards are named 000000.tar upwards.
SUBSET_PAIRS = {"commercial": 17_607_694, "noncommercial": 5_332_781, "other": 1_109_948}
SUBSET_SHARDS = {"commercial": 1862, "noncommercial": 560, "other": 115}

# BIOMEDICA dropped images smaller than this many pixels on a side.
MIN_IMAGE_SIZE = 21
