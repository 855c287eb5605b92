-- See 1667232160_agent_tags for why ADD VALUE is fine here.
ALTER TYPE provider ADD VALUE IF NOT EXISTS 'Lumen';
ALTER TYPE provider ADD VALUE IF NOT EXISTS 'None';
