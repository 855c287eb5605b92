-- See 1667232160_agent_tags for why ADD VALUE is fine here.
ALTER TYPE process ADD VALUE IF NOT EXISTS 'ShepherdAgentStart';
ALTER TYPE process ADD VALUE IF NOT EXISTS 'ShepherdRecovery';
